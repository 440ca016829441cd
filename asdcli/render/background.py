"""Backgrounds: the colour a ray gets where the object does not cover it.

Kinds:
- "solid": one fixed colour (cfg.background_color).
- "random": a random solid colour per image while training (so the object cannot hide in the background),
  the fixed colour at evaluation.
- "env-mlp": a trainable environment map, direction → SH degree 3 (16) → bias-free MLP 16-16-16-3 → sigmoid
  (the reference's neural environment map, 560 parameters); while training, each image is replaced by a random
  solid colour with probability `random_prob`.
- "text-env-mlp": Hyper-iNGP's per-prompt environment map: direction → hash grid (16 levels at resolution 16)
  → a bias-free MLP 32→64→3 whose weights a hypernetwork makes from the prompt's pooled text → sigmoid.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from asdcli.generators.hashgrid import HashGrid, HashGridConfig
from asdcli.generators.mlp import HyperNetwork, batched_mlp, split_weights

KINDS = ("solid", "random", "env-mlp", "text-env-mlp")


def uniform(shape: tuple[int, ...], gen: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) drawn from `gen` (on the generator's own device), moved to `device`."""
    dev = gen.device if gen is not None else device
    return torch.rand(shape, generator=gen, device=dev).to(device)


def sh_degree3(d: Tensor) -> Tensor:
    """Real spherical harmonics up to degree 3 of unit directions: d [..., 3] → [..., 16]."""
    x, y, z = d.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    return torch.stack([
        torch.full_like(x, 0.28209479177387814),
        -0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x,
        1.0925484305920792 * x * y, -1.0925484305920792 * y * z,
        0.94617469575755997 * zz - 0.31539156525251999, -1.0925484305920792 * x * z,
        0.54627421529603959 * (xx - yy),
        0.59004358992664352 * y * (-3 * xx + yy), 2.8906114426405538 * x * y * z,
        0.45704579946446572 * y * (1 - 5 * zz), 0.3731763325901154 * z * (5 * zz - 3),
        0.45704579946446572 * x * (1 - 5 * zz), 1.4453057213202769 * z * (xx - yy),
        0.59004358992664352 * x * (-xx + 3 * yy),
    ], dim=-1)


class Background(nn.Module):
    """forward(ray_dirs [B, R, 3], training, gen, text=None) → colours [B, R, 3] in [0, 1].

    text: pooled text [P, D] of the step's prompts ("text-env-mlp" only); image b belongs to prompt
    b // (B / P).
    """

    def __init__(self, kind: str, color: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 text_dim: int | None = None, random_prob: float | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown background kind {kind!r}; allowed: {', '.join(KINDS)}")
        self.kind = kind
        self.register_buffer("color", torch.tensor(color, dtype=torch.float32), persistent=False)
        # Reference values: 0.5 for the env map of the 3DConv runs, 0.2 for Hyper-iNGP's text env map.
        default_prob = 0.2 if kind == "text-env-mlp" else 0.5
        self.random_prob = default_prob if random_prob is None else random_prob
        if kind == "env-mlp":
            self.mlp = nn.Sequential(nn.Linear(16, 16, bias=False), nn.ReLU(), nn.Linear(16, 16, bias=False),
                                     nn.ReLU(), nn.Linear(16, 3, bias=False))
        elif kind == "text-env-mlp":
            if text_dim is None:
                raise ValueError("background 'text-env-mlp' needs the text width (text_dim)")
            self.grid = HashGrid(HashGridConfig(n_levels=16, n_features_per_level=2, log2_hashmap_size=19,
                                                base_resolution=16, per_level_scale=1.0))
            self.shapes = [(self.grid.out_dim, 64), (64, 3)]
            self.hyper = HyperNetwork(text_dim, sum(a * b for a, b in self.shapes))

    def forward(self, ray_dirs: Tensor, training: bool, gen: torch.Generator | None = None,
                text: Tensor | None = None) -> Tensor:
        b, r, _ = ray_dirs.shape
        if self.kind == "solid" or (self.kind == "random" and not training):
            return self.color.to(ray_dirs.dtype).expand(b, r, 3)
        if self.kind == "random":
            return uniform((b, 1, 3), gen, ray_dirs.device).expand(b, r, 3)
        if self.kind == "env-mlp":
            out = self.mlp(sh_degree3(ray_dirs)).sigmoid()
        else:
            out = self._text_env(ray_dirs, text)
        if training and self.random_prob > 0:
            pick = uniform((b, 1, 1), gen, ray_dirs.device) < self.random_prob
            out = torch.where(pick, uniform((b, 1, 3), gen, ray_dirs.device), out)
        return out

    def _text_env(self, ray_dirs: Tensor, text: Tensor | None) -> Tensor:
        if text is None:
            raise ValueError("background 'text-env-mlp' needs the prompts' pooled text: render(text=...)")
        b, r, _ = ray_dirs.shape
        p = text.shape[0]
        enc = self.grid((ray_dirs.reshape(-1, 3) + 1) / 2).view(p, (b // p) * r, -1)
        weights = split_weights(self.hyper(text.float()), self.shapes)
        return batched_mlp(enc, weights).view(b, r, 3).sigmoid()

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The trainable background's optimiser group ([] for solid and random)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "name": "background"}] if params else []


def build_background(cfg: Any, text_dim: int | None = None, kind: str | None = None) -> Background:
    """The background a RenderConfig names (`kind` overrides cfg.background, e.g. "text-env-mlp")."""
    return Background(kind or cfg.background, tuple(cfg.background_color), text_dim,
                      getattr(cfg, "background_random_prob", None))
