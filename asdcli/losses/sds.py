"""Score Distillation Sampling (SDS, DreamFusion): the baseline ASD improves on.

grad = w(t)·(ε̂_cfg(z_t, y, t) − ε): the guided prediction minus the noise actually added. One batched prior
call over [cond@t, uncond@t] (plus K·B Perp-Neg rows).
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
class SDSConfig(ScoreDistillationConfig):
    """SDS has only the shared score-distillation options."""


class ScoreDistillationSampling(ScoreDistillation):
    """SDS loss. forward(z [B, C, h, w], cond, step, total_steps, gen) → LossOutput, as ScoreDistillation."""

    Config = SDSConfig

    def direction(self, z: Tensor, cond: Conditioning, t: Tensor, noise: Tensor, window: TimestepWindow,
                  gen: torch.Generator, guidance: float) -> tuple[Tensor, dict[str, float]]:
        """ε̂_cfg(z_t, t) − ε [B, C, h, w]."""
        z_t = self.prior.add_noise(z, noise, t)
        eps = predict_branches(self.prior, cfg_branches(z_t, t, cond), cond.cameras)
        return guided_noise(eps, cond, guidance) - noise, {}
