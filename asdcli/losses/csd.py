"""Classifier Score Distillation (CSD): distil only the classifier-free guidance direction.

grad = w(t)·(ε_c(z_t) − ε_u(z_t)): the implicit classifier's score, without SDS's noise residual. A
guidance scale would only rescale this direction (the loss weight does that), so `guidance_scale` is not
used. With Perp-Neg the direction is the guided one, e_pos + Σ_k w_k·⊥(ε_neg_k − ε_u, e_pos) (the plain
difference when there are no negatives). One batched prior call over [cond@t, uncond@t] (plus K·B Perp-Neg
rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from asdcli.conditioning import Conditioning
from asdcli.losses.base import (
    ScoreDistillation,
    ScoreDistillationConfig,
    cfg_branches,
    guided_noise,
    predict_branches,
)
from asdcli.losses.timesteps import TimestepWindow


@dataclass(frozen=True)
class CSDConfig(ScoreDistillationConfig):
    """CSD has only the shared score-distillation options (guidance_scale is unused)."""


class ClassifierScoreDistillation(ScoreDistillation):
    """CSD loss. forward(z [B, C, h, w], cond, step, total_steps, gen) → LossOutput, as ScoreDistillation."""

    Config = CSDConfig

    def direction(self, z: Tensor, cond: Conditioning, t: Tensor, noise: Tensor, window: TimestepWindow,
                  gen: torch.Generator, guidance: float) -> tuple[Tensor, dict[str, float]]:
        """ε_c(z_t, t) − ε_u(z_t, t) [B, C, h, w] (with Perp-Neg: the perpendicular-corrected difference)."""
        z_t = self.prior.add_noise(z, noise, t)
        eps = predict_branches(self.prior, cfg_branches(z_t, t, cond), cond.cameras)
        # guided_noise with scale 1 is ε_u + direction, so subtracting ε_u leaves the guidance direction.
        return guided_noise(eps, cond, 1.0) - eps[1], {}
