"""One micro-step of score distillation: prompts + cameras → render → prior latents → loss terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from asdcli.config import RunConfig
from asdcli.losses import regularizers as reg
from asdcli.render.cameras import CameraBatch, sample_training_cameras
from asdcli.render.volume import render


class Draw(NamedTuple):
    """What one micro-step renders: prompts [P], cameras [P·V], generator noise [P, noise_dim] or None, side."""

    batch: list[str]
    cams: CameraBatch
    noise: Tensor | None
    res: int


@dataclass
class MicroStep:
    loss: Tensor  # scalar: weighted sum of every term
    logs: dict[str, float | Tensor]  # device values as detached 0-d tensors (see read_logs)


class StepRunner:
    def __init__(self, cfg: RunConfig, parts, text, device: torch.device):
        self.cfg, self.parts, self.text, self.device = cfg, parts, text, device

    def autocast(self):
        precision = self.cfg.train.precision
        enabled = self.device.type == "cuda" and precision != "fp32"
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=enabled)

    def draw(self, prompts: list[str], step: int, gen: torch.Generator) -> Draw:
        """This step's P prompts of `prompts` (this rank's shard), their V cameras each, the generator's noise
        and the render side, drawn with `gen` in that order (a resumed run repeats them)."""
        cfg, generator = self.cfg, self.parts.generator
        P, V = cfg.render.prompts_per_step, cfg.render.views_per_prompt
        batch = [prompts[i] for i in torch.randint(len(prompts), (P,), generator=gen).tolist()]
        cams = sample_training_cameras(cfg.render.camera, P, V, gen).to(self.device)
        noise = None
        if generator.noise_dim:
            noise = torch.randn(P, generator.noise_dim, generator=gen).to(self.device)
        return Draw(batch, cams, noise, int(round(cfg.render.resolution.at(step, cfg.train.steps))))

    def __call__(self, prompts: list[str], step: int, gen: torch.Generator) -> MicroStep:
        """prompts: this rank's shard; P of them are drawn with `gen`."""
        cfg, parts = self.cfg, self.parts
        total = cfg.train.steps
        P, V = cfg.render.prompts_per_step, cfg.render.views_per_prompt
        batch, cams, noise, res = self.draw(prompts, step, gen)
        w = cfg.loss.weights
        # Field gradients (create_graph) cost about as much as the rest of the render: only when a term uses them.
        normals = w.eikonal.at(step, total) > 0 or w.orient.at(step, total) > 0 or cfg.render.shading == "lambertian"

        with self.autocast():
            text = self.text(batch).to(self.device)
            state = parts.generator(text, noise)
            out = render(parts.generator, state, cams, res, res, cfg.render, parts.background, P, gen,
                         need_normals=normals, text=text)
        images = out.rgb.float().permute(0, 3, 1, 2)  # [B, 3, H, W]
        z = parts.prior.encode(images)
        per_image = [p for p in batch for _ in range(V)]
        cond = parts.prior.conditioning(per_image, cams.elevation, cams.azimuth, cams.c2w)
        sd = parts.loss(z, cond, step, total, gen)
        return self._total(sd, out, step, total)

    def _total(self, sd, out, step: int, total: int) -> MicroStep:
        w = self.cfg.loss.weights
        terms = {"distill": (w.distill.at(step, total), sd.loss)}
        opacity = out.opacity.float()
        lazy = {
            "sparsity": lambda: reg.sparsity(opacity),
            "opaque": lambda: reg.opaque(opacity),
            "eikonal": lambda: reg.eikonal(out.sdf_grad.float()),
            "orient": lambda: reg.orient(out.weights, out.sample_normals, out.ray_dirs,
                                         opacity.reshape(opacity.shape[0], -1)),
            "z_variance": lambda: reg.z_variance(out.z_variance.float(), opacity),
        }
        for name, fn in lazy.items():
            weight = getattr(w, name).at(step, total)
            if weight > 0:  # a term with weight 0 costs nothing and is not logged
                terms[name] = (weight, fn())
        loss = sum(weight * value for weight, value in terms.values())
        # Logged values stay on the device (detached, 0-d): reading them here would wait for the device every
        # step; the trainer reads them every train.log_every steps (`read_logs`).
        logs = dict(sd.logs)
        logs.update({f"loss_{k}": v.detach() for k, (_, v) in terms.items()})
        logs["loss"] = loss.detach()
        return MicroStep(loss, logs)


def read_logs(logs: dict) -> dict[str, float]:
    """Logged values as plain floats (one host read per device value)."""
    return {k: float(v) for k, v in logs.items()}
