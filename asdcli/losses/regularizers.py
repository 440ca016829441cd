"""Geometry regularisers: pure functions of render outputs, each returning a scalar tensor.

The engine multiplies each by its scheduled weight (LossWeights) and skips it when the weight is 0. Formulas
follow the reference system (threestudio-style): see DESIGN §3 and the reference §4.1.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sparsity(opacity: Tensor) -> Tensor:
    """mean √(opacity² + 0.01) over any shape: a smooth L1 that pushes empty space to stay empty."""
    return torch.sqrt(opacity**2 + 0.01).mean()


def opaque(opacity: Tensor) -> Tensor:
    """Mean binary entropy −(o·log o + (1−o)·log(1−o)) of opacity o clamped to [1e−3, 1−1e−3]: pushes each ray
    to be fully empty or fully opaque (the clamp keeps the log finite at 0 and 1)."""
    o = opacity.clamp(1e-3, 1.0 - 1e-3)
    return -(o * torch.log(o) + (1.0 - o) * torch.log(1.0 - o)).mean()


def eikonal(sdf_grad: Tensor) -> Tensor:
    """mean (‖∇sdf‖ − 1)² for sdf_grad [..., 3]: keeps the signed distance field a true distance."""
    return ((sdf_grad.norm(dim=-1) - 1.0) ** 2).mean()


def orient(weights: Tensor, normals: Tensor, dirs: Tensor, opacity: Tensor) -> Tensor:
    """Σ sg(w)·max(0, n·d)² / #(opacity > 0): penalises normals that face away from the camera.

    weights [B, R, S] volume-rendering weights (detached: the term moves normals, not where mass sits),
    normals [B, R, S, 3], dirs [B, R, 3] ray directions (camera → scene), opacity [B, R]. A normal facing the
    camera has n·d < 0 and costs nothing. The count is clamped to 1 so an empty render gives 0, not NaN.
    """
    facing_away = (normals * dirs.unsqueeze(-2)).sum(-1).clamp(min=0.0) ** 2
    return (weights.detach() * facing_away).sum() / (opacity > 0).sum().clamp(min=1)


def z_variance(z_var: Tensor, opacity: Tensor) -> Tensor:
    """Mean depth variance z_var over rays with opacity > 0.5 (same shape as opacity); 0 when there are none.
    Low variance along a ray means a thin, surface-like density."""
    mask = (opacity > 0.5).to(z_var.dtype)
    return (z_var * mask).sum() / mask.sum().clamp(min=1.0)
