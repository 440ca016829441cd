"""Timestep sampling shared by the score-distillation losses: the scheduled timestep window, t, and ASD's t⁺.

Every random number is drawn on the CPU from the engine's `torch.Generator`, so a run is reproducible and a
resumed run continues the same stream. Callers move the results to the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from asdcli.schedule import Schedule

Weighting = Literal["sds", "uniform", "fantasia3d"]


@dataclass(frozen=True)
class TimestepWindow:
    """The integer range t is drawn from at one step: UniformInt[min_step, max_step], both inclusive."""

    min_step: int
    max_step: int
    num_train_timesteps: int  # T (1000 for Stable Diffusion / MVDream)


def timestep_window(num_train_timesteps: int, t_min: Schedule, t_max: Schedule, step: int,
                    total_steps: int) -> TimestepWindow:
    """min_step = int(T·t_min(step)), max_step = int(T·t_max(step)), as in the reference.

    The bounds are clamped into [0, T−1] with min_step ≤ max_step, so a recipe whose schedules cross (or a
    fraction of 1.0, which would give t = T) still yields valid timesteps instead of an index error.
    """
    T = int(num_train_timesteps)
    max_step = min(max(int(T * t_max.at(step, total_steps)), 0), T - 1)
    min_step = min(max(int(T * t_min.at(step, total_steps)), 0), max_step)
    return TimestepWindow(min_step, max_step, T)


def sample_timesteps(batch: int, window: TimestepWindow, shared: bool, gen: torch.Generator) -> Tensor:
    """t ~ UniformInt[min_step, max_step] → [batch] long on CPU.

    One value per image, or one value repeated for the whole batch when `shared` (MVDream: the views of a
    batch attend to each other, so they must sit at the same noise level).
    """
    n = 1 if shared else batch
    t = torch.randint(window.min_step, window.max_step + 1, (n,), generator=gen, dtype=torch.long)
    return t.expand(batch).clone() if shared else t


def shifted_timesteps(t: Tensor, window: TimestepWindow, shift_ratio: float, shift_random: bool, shared: bool,
                      gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """ASD's later timestep: (t⁺ [B], Δt [B]), both long on t's device, for t [B] long (u is drawn on CPU).

    Δt = ⌊u · clamp(η·(t − min_step), 0, T−1−t)⌋ with u ~ U(0, 1) (u = 1 when `shift_random` is false) and
    t⁺ = clamp(t + Δt, 1, T−1). Δt grows from 0 at the bottom of the window to η·(max_step − min_step) at its
    top, so the shift scales with the noise level. The bound is computed in float64 so that e.g. 0.1·30 floors
    to 3 exactly as Python's arithmetic does. With `shared` (one t for the batch) one u is drawn, so t⁺ is
    shared too.
    """
    T = window.num_train_timesteps
    bound = (shift_ratio * (t - window.min_step).to(torch.float64))
    bound = torch.minimum(bound.clamp(min=0.0), (T - 1 - t).to(torch.float64).clamp(min=0.0))
    if shift_random:
        u = torch.rand(1 if shared else t.numel(), generator=gen, dtype=torch.float64).to(t.device)
        bound = u.expand_as(bound) * bound
    delta = bound.floor().to(torch.long)
    t_plus = (t + delta).clamp(1, T - 1)
    return t_plus, delta


def loss_weight(alphas_cumprod: Tensor, t: Tensor, weighting: Weighting) -> Tensor:
    """w(t) [B] float32 on t's device, indexed by t (never by t⁺).

    "sds": 1 − ᾱ_t (σ_t², the SDS paper's choice and the reference's only one); "uniform": 1;
    "fantasia3d": √ᾱ_t·(1 − ᾱ_t).
    """
    alpha = alphas_cumprod.to(t.device, torch.float32)[t]
    if weighting == "sds":
        return 1.0 - alpha
    if weighting == "uniform":
        return torch.ones_like(alpha)
    if weighting == "fantasia3d":
        return alpha.sqrt() * (1.0 - alpha)
    raise ValueError(f"unknown weighting {weighting!r}; allowed: 'sds', 'uniform', 'fantasia3d'")
