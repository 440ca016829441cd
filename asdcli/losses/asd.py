"""Asynchronous Score Distillation (ASD): the method of the paper.

Instead of SDS's noise residual ε̂_cfg(z_t) − ε, ASD subtracts the prior's own conditional prediction at a
slightly later timestep t⁺ = t + Δt, computed from the same noise ε:

    grad = w(t)·(ε̂_cfg(z_t, y, t) − ε̂_c(z_{t⁺}, y, t⁺)).

The shifted, conditional-only prediction plays the role VSD's LoRA plays, but comes from the frozen prior, so
nothing is trained and the prior's weights never change. All three predictions go into one batched prior call
[cond@t, uncond@t, cond@t⁺] (plus K·B Perp-Neg rows at t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from asdcli.conditioning import Conditioning
from asdcli.errors import ConfigError
from asdcli.losses.base import (
    ScoreDistillation,
    ScoreDistillationConfig,
    cfg_branches,
    guided_noise,
    predict_branches,
)
from asdcli.losses.timesteps import TimestepWindow, shifted_timesteps


@dataclass(frozen=True)
class ASDConfig(ScoreDistillationConfig):
    """ASD options on top of the shared score-distillation ones."""

    shift_ratio: float = 0.1  # η: Δt ≤ η·(t − min_step), so at most 48 steps with the default window
    shift_random: bool = True  # Δt = ⌊u·bound⌋ with u ~ U(0, 1); false: Δt = ⌊bound⌋ (deterministic)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.shift_ratio < 0:
            raise ConfigError(f"loss.shift_ratio: must be >= 0, got {self.shift_ratio:g}")


class AsynchronousScoreDistillation(ScoreDistillation):
    """ASD loss. forward(z [B, C, h, w], cond, step, total_steps, gen) → LossOutput (see ScoreDistillation);
    logs add `t_plus` (mean t⁺) and `dt` (mean Δt)."""

    Config = ASDConfig
    cfg: ASDConfig

    def direction(self, z: Tensor, cond: Conditioning, t: Tensor, noise: Tensor, window: TimestepWindow,
                  gen: torch.Generator, guidance: float) -> tuple[Tensor, dict[str, float]]:
        """ε̂_cfg(z_t, t) − ε̂_c(z_{t⁺}, t⁺) [B, C, h, w] from one prior call; z_t and z_{t⁺} share ε."""
        prior, cfg = self.prior, self.cfg
        t_plus, delta = shifted_timesteps(t, window, cfg.shift_ratio, cfg.shift_random, prior.shared_timestep,
                                          gen)
        z_t = prior.add_noise(z, noise, t)
        z_t_plus = prior.add_noise(z, noise, t_plus)
        # Branch order [cond@t, uncond@t, (Perp-Neg negatives@t), cond@t⁺]: the shifted branch is last so the
        # CFG branches keep the layout `guided_noise` expects.
        branches = [*cfg_branches(z_t, t, cond), (z_t_plus, t_plus, cond.cond)]
        *eps_t, eps_shifted = predict_branches(prior, branches, cond.cameras)
        eps_cfg = guided_noise(eps_t, cond, guidance)
        logs = {"t_plus": t_plus.detach().float().mean(), "dt": delta.detach().float().mean()}  # read when logged
        return eps_cfg - eps_shifted, logs
