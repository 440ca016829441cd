"""Variational Score Distillation (VSD, ProlificDreamer): the baseline that trains a second diffusion model.

grad = w(t)·(ε̂_cfg(z_t, y, t) − ε_lora(z_t, y, t, camera)), where ε_lora is a LoRA-adapted copy of the prior's
UNet that is fitted, every step, to the current renders with the standard denoising loss. ASD replaces this
trained model by the frozen prior at a later timestep; VSD is here to compare against.

How the LoRA model is built (the prior object itself is never modified, and stays bit-identical):
- a deep copy of `prior.unet` gets peft LoRA adapters on its attention projections (to_q, to_k, to_v,
  to_out.0);
- with `camera_condition`, a small MLP maps the 16-value camera vector (Conditioning.cameras [B, 16]) to the
  UNet's timestep-embedding width and is ADDED to the timestep embedding through a forward hook on
  `unet.time_embedding` (ProlificDreamer adds its camera embedding there as a class embedding; the hook does
  the same without needing the copy to be built with a class-embedding slot). Its last layer starts at zero,
  so the LoRA model starts as an exact copy of the prior;
- the copy is run through `prior.unet_forward(unet, z_t, t, text, cameras)` (so it gets the prior's dtype and
  input handling; Prior's default calls it as a plain diffusers UNet2DConditionModel).
Only the LoRA and camera-MLP parameters are registered on the loss, so they alone are in its state_dict; their
Adam state is `optimizer_state_dict()`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdcli.conditioning import Conditioning
from asdcli.errors import ConfigError
from asdcli.losses.base import (
    ScoreDistillation,
    ScoreDistillationConfig,
    cfg_branches,
    guided_noise,
    predict_branches,
)
from asdcli.losses.timesteps import TimestepWindow, sample_timesteps
from asdcli.priors.base import Prior


@dataclass(frozen=True)
class VSDConfig(ScoreDistillationConfig):
    """VSD options on top of the shared score-distillation ones."""

    lora_rank: int = 4  # rank r of the LoRA adapters
    lora_alpha: float = 4.0  # LoRA scale numerator: updates are scaled by alpha / r
    lora_lr: float = 1e-4  # Adam learning rate of the LoRA (and camera MLP)
    lora_train_t: tuple[float, float] = (0.0, 1.0)  # t range of the LoRA's denoising loss, fractions of T
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # adapted UNet sub-modules
    camera_condition: bool = True  # add a camera-MLP embedding to the LoRA UNet's timestep embedding

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_rank < 1:
            raise ConfigError(f"loss.lora_rank: must be >= 1, got {self.lora_rank}")
        lo, hi = self.lora_train_t
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"loss.lora_train_t: need 0 <= low <= high <= 1, got {list(self.lora_train_t)}")


def run_unet(prior: Prior, unet: nn.Module, z_t: Tensor, t: Tensor, text: Tensor,
             cameras: Tensor | None) -> Tensor:
    """ε prediction [N, C, h, w] float32 of `unet` (a copy of prior.unet) on z_t [N, C, h, w], t [N], text
    [N, L, D], through `prior.unet_forward` (the prior's own input handling; Prior's default calls the diffusers
    UNet in its own dtype). Gradients flow (the caller chooses no_grad or not)."""
    return prior.unet_forward(unet, z_t, t, text, cameras).float()


class CameraEmbedding(nn.Module):
    """cameras [N, 16] → [N, dim] added to the timestep embedding; zero at initialisation."""

    def __init__(self, dim: int, camera_dim: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(camera_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, cameras: Tensor) -> Tensor:
        return self.net(cameras.float())


class VariationalScoreDistillation(ScoreDistillation):
    """VSD loss. forward(z [B, C, h, w], cond, step, total_steps, gen) → LossOutput (see ScoreDistillation);
    each call also takes one Adam step of the LoRA on the detached z. Logs add `lora_loss`."""

    Config = VSDConfig
    cfg: VSDConfig

    def __init__(self, cfg: VSDConfig, prior: Prior) -> None:
        super().__init__(cfg, prior)
        if not isinstance(getattr(prior, "unet", None), nn.Module):
            raise ConfigError(f"loss.kind: vsd needs a prior with a `unet` module; "
                              f"{type(prior).__name__} has none")
        # lazy: peft is optional (test extra): only the vsd loss needs it
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer

        unet = copy.deepcopy(prior.unet).requires_grad_(False).eval()
        lora_cfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                              target_modules=list(cfg.lora_target_modules), init_lora_weights=True)
        unet = inject_adapter_in_model(lora_cfg, unet)
        # Register the adapters (shared with the copy, not copied) so state_dict()/.to() see exactly them; the
        # copy's frozen base weights stay unregistered like the prior itself.
        self.lora = nn.ModuleDict({
            name.replace(".", "_"): nn.ModuleDict({"A": m.lora_A, "B": m.lora_B})
            for name, m in unet.named_modules() if isinstance(m, LoraLayer)
        })
        if not self.lora:
            raise ConfigError(f"loss.lora_target_modules: no module of the UNet matches "
                              f"{list(cfg.lora_target_modules)}")
        self.lora.float()  # adapters train in fp32 even when the copied UNet is fp16
        self.lora.requires_grad_(True)
        self._unet_ref = (unet,)
        self._camera_emb: Tensor | None = None
        self.camera_mlp = self._build_camera_mlp(unet) if cfg.camera_condition else None
        self.optimizer = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=cfg.lora_lr)

    def _build_camera_mlp(self, unet: nn.Module) -> CameraEmbedding:
        time_embedding = getattr(unet, "time_embedding", None)
        linear = getattr(time_embedding, "linear_2", None)
        if not isinstance(linear, nn.Linear):
            raise ConfigError("loss.camera_condition: the prior's UNet has no diffusers `time_embedding` to "
                              "add a camera embedding to; set loss.camera_condition: false")
        time_embedding.register_forward_hook(self._add_camera_embedding)
        return CameraEmbedding(linear.out_features).to(linear.weight.device)

    def _add_camera_embedding(self, module: nn.Module, args: Any, out: Tensor) -> Tensor:
        return out if self._camera_emb is None else out + self._camera_emb.to(out.dtype)

    @property
    def lora_unet(self) -> nn.Module:
        """The LoRA-adapted copy of the prior's UNet (not a registered submodule)."""
        return self._unet_ref[0]

    @contextlib.contextmanager
    def _camera(self, cameras: Tensor | None) -> Iterator[None]:
        """Make the time-embedding hook add the camera embedding of `cameras` [N, 16] for one UNet call."""
        if self.camera_mlp is not None:
            if cameras is None:
                raise ValueError("VSD with camera_condition needs Conditioning.cameras [B, 16] from the "
                                 "prior; set loss.camera_condition: false for priors that give none")
            self._camera_emb = self.camera_mlp(cameras)
        try:
            yield
        finally:
            self._camera_emb = None

    def lora_noise(self, z_t: Tensor, t: Tensor, text: Tensor, cameras: Tensor | None) -> Tensor:
        """ε_lora(z_t, t, text, camera) [N, C, h, w] float32 (differentiable w.r.t. the LoRA)."""
        with self._camera(cameras):
            return run_unet(self.prior, self.lora_unet, z_t, t, text, cameras)

    def _sync_device(self, device: torch.device) -> None:
        """Keep the copy, adapters, camera MLP and Adam state on the renders' device, whatever order the
        engine moved the prior and the loss in."""
        if all(p.device == device for p in self.lora_unet.parameters()):
            return
        self.lora_unet.to(device)
        if self.camera_mlp is not None:
            self.camera_mlp.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, Tensor) and key != "step":
                    state[key] = value.to(device)

    def direction(self, z: Tensor, cond: Conditioning, t: Tensor, noise: Tensor, window: TimestepWindow,
                  gen: torch.Generator, guidance: float) -> tuple[Tensor, dict[str, float]]:
        """ε̂_cfg(z_t, t) − ε_lora(z_t, t) [B, C, h, w], then one LoRA training step on z."""
        self._sync_device(z.device)
        z_t = self.prior.add_noise(z, noise, t)
        eps = predict_branches(self.prior, cfg_branches(z_t, t, cond), cond.cameras)
        eps_cfg = guided_noise(eps, cond, guidance)
        with torch.no_grad():
            eps_lora = self.lora_noise(z_t, t, cond.cond, cond.cameras)
        # Fit the LoRA after using it, as ProlificDreamer does: the estimate comes from the model trained on
        # the previous renders.
        lora_loss = self.train_lora(z, cond, gen)
        return eps_cfg - eps_lora, {"lora_loss": lora_loss}

    def train_lora(self, z: Tensor, cond: Conditioning, gen: torch.Generator) -> float:
        """One Adam step of the standard ε-prediction loss ‖ε_lora(z_t', t', y, camera) − ε'‖² on detached z
        [B, C, h, w] at a fresh t' ~ UniformInt over `lora_train_t` and fresh ε'. Returns the loss value."""
        T = self.prior.num_train_timesteps
        lo, hi = self.cfg.lora_train_t
        window = TimestepWindow(min(int(T * lo), T - 1), min(int(T * hi), T - 1), T)
        t = sample_timesteps(z.shape[0], window, self.prior.shared_timestep, gen).to(z.device)
        noise = torch.randn(tuple(z.shape), generator=gen, dtype=torch.float32).to(z.device)
        z_t = self.prior.add_noise(z.detach(), noise, t)
        with torch.enable_grad():
            loss = F.mse_loss(self.lora_noise(z_t, t, cond.cond, cond.cameras), noise)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def optimizer_state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        # torch keeps same-device state tensors by reference; copy so two losses never share Adam moments.
        self.optimizer.load_state_dict(copy.deepcopy(state))
