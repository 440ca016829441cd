"""Score distillation: configs, the shared forward (timesteps, weighting, clipping, reparameterised loss) and
the batched, classifier-free-guided prior call every loss uses.

A loss turns the prior-space image z of a batch of B renders into a scalar whose gradient w.r.t. z is
grad / B, where grad = w(t)·(direction) and each loss defines its own direction (ASD: ε̂_cfg(z_t) − ε̂(z_{t⁺});
SDS: ε̂_cfg − ε; CSD: ε_c − ε_u; VSD: ε̂_cfg − ε_lora). The prior is frozen and not a submodule of the loss,
so a loss's state_dict holds only its own trained parameters (VSD's LoRA) and the prior stays bit-identical.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from asdcli.conditioning import Conditioning
from asdcli.errors import ConfigError
from asdcli.losses.timesteps import TimestepWindow, Weighting, loss_weight, sample_timesteps, timestep_window
from asdcli.priors.base import Prior
from asdcli.schedule import NamedSchedule, Schedule


def _const(value: float) -> Any:
    return field(default_factory=lambda: Schedule.constant(value))


def _fraction_ramp(start_value: float, end_value: float) -> Any:
    """A linear schedule over the whole run, in fractions of `train.steps` (keeps its shape under --steps)."""
    return field(default_factory=lambda: Schedule(kind="linear", start_value=start_value, end_value=end_value,
                                                  start=0.0, end=1.0, unit="fraction"))


@dataclass(frozen=True)
class LossWeights:
    """Scheduled weights of the terms the engine sums; a weight of 0 skips its term."""

    distill: Schedule = _const(1.0)  # score-distillation term (LossOutput.loss; the engine multiplies)
    sparsity: Schedule = _const(0.0)  # mean √(opacity² + 0.01): pushes empty space to be empty
    opaque: Schedule = _const(0.0)  # binary entropy of opacity: pushes opacity to 0 or 1
    eikonal: Schedule = _const(0.0)  # (‖∇sdf‖ − 1)²: keeps the SDF a distance field
    orient: Schedule = _const(0.0)  # penalises normals facing away from the camera
    z_variance: Schedule = _const(0.0)  # depth variance along rays: favours thin surfaces


@dataclass(frozen=True)
class ScoreDistillationConfig:
    """Options shared by every score-distillation loss (recipe section `loss:`)."""

    kind: str  # registry name: asd | sds | csd | vsd
    guidance_scale: Schedule = _const(7.5)  # classifier-free guidance scale s (a schedule: docs/notebook.md §9e)
    # w(t): sds 1−ᾱ_t | uniform 1 | fantasia3d √ᾱ_t(1−ᾱ_t); a name or {piecewise: {0: sds, 8000: uniform}}
    weighting: NamedSchedule[Weighting] = field(default_factory=lambda: NamedSchedule.constant("sds"))
    t_min: Schedule = _fraction_ramp(0.5, 0.02)  # bottom of the timestep window, fraction of T
    t_max: Schedule = _fraction_ramp(0.98, 0.5)  # top of the timestep window, fraction of T
    grad_clip: Schedule | None = None  # element-wise clamp of grad to ±value; null = off
    weights: LossWeights = field(default_factory=LossWeights)  # weights of the distillation and regularisers

    def __post_init__(self) -> None:
        lowest = self.guidance_scale.lowest()
        if lowest < 0:
            raise ConfigError(f"loss.guidance_scale: must be >= 0 at every step, got {lowest:g}")


@dataclass
class LossOutput:
    """loss: scalar with ∂loss/∂z = grad / B (not multiplied by weights.distill); logs: floats, or detached 0-d
    tensors for values computed on the device (read with float() when logged)."""

    loss: Tensor
    logs: dict[str, float]


Branch = tuple[Tensor, Tensor, Tensor]  # (z_t [B, C, h, w], t [B] long, text [B, L, D]) for one prior branch


def predict_branches(prior: Prior, branches: Sequence[Branch], cameras: Tensor | None) -> list[Tensor]:
    """Run every branch through the prior in ONE batched call (a single UNet launch) → one ε̂ [B, C, h, w]
    per branch. Each branch holds B rows in image order, so the cameras [B, 16] are repeated per branch and a
    multi-view prior still sees each group of views contiguously."""
    z_t = torch.cat([b[0] for b in branches])
    t = torch.cat([b[1] for b in branches])
    text = torch.cat([b[2] for b in branches])
    cams = None if cameras is None else cameras.repeat(len(branches), 1)
    with torch.no_grad():
        eps = prior.predict_noise(z_t, t, text, cams).float()
    return list(eps.split([b[0].shape[0] for b in branches]))


def cfg_branches(z_t: Tensor, t: Tensor, cond: Conditioning) -> list[Branch]:
    """The branches classifier-free guidance needs at (z_t, t): [cond, uncond] plus one per Perp-Neg
    negative (cond.perp_neg [B, K, L, D] → K branches)."""
    branches = [(z_t, t, cond.cond), (z_t, t, cond.uncond)]
    if cond.perp_neg is not None:
        if cond.perp_neg_weights is None:
            raise ValueError("Conditioning.perp_neg is set but perp_neg_weights is None")
        branches += [(z_t, t, cond.perp_neg[:, k]) for k in range(cond.perp_neg.shape[1])]
    return branches


def perpendicular(x: Tensor, y: Tensor) -> Tensor:
    """Component of x orthogonal to y, per sample over all non-batch dims (x, y [B, ...])."""
    dims = tuple(range(1, x.dim()))
    coef = (x * y).sum(dims, keepdim=True) / (y * y).sum(dims, keepdim=True).clamp(min=1e-6)
    return x - coef * y


def guided_noise(eps: Sequence[Tensor], cond: Conditioning, scale: float) -> Tensor:
    """ε̂_cfg = ε_u + s·(e_pos + Σ_k w_k·⊥(ε_neg_k − ε_u, e_pos)) with e_pos = ε_c − ε_u, from the outputs of
    `cfg_branches` in order. Without Perp-Neg the sum is empty and this is plain CFG. cond.perp_neg_weights
    [B, K] are the effective weights (already including the sign and the Perp-Neg scale)."""
    eps_c, eps_u, *eps_neg = eps
    e_pos = eps_c - eps_u
    delta = e_pos
    for k, eps_k in enumerate(eps_neg):
        w = cond.perp_neg_weights[:, k].to(e_pos).view(-1, *([1] * (e_pos.dim() - 1)))
        delta = delta + w * perpendicular(eps_k - eps_u, e_pos)
    return eps_u + scale * delta


class ScoreDistillation(nn.Module, abc.ABC):
    """Base of the score-distillation losses: draws t and ε, applies w(t), nan_to_num, clipping and the
    reparameterised loss around the direction a subclass computes.

    forward(z [B, C, h, w], cond, step, total_steps, gen) → LossOutput with ∂loss/∂z = grad / B.
    """

    Config = ScoreDistillationConfig

    def __init__(self, cfg: ScoreDistillationConfig, prior: Prior) -> None:
        super().__init__()
        self.cfg = cfg
        # A tuple hides the prior from nn.Module registration: no prior weights in state_dict(), .to() or
        # .parameters() of the loss, so checkpoints and optimisers never touch it.
        self._prior_ref = (prior,)

    @property
    def prior(self) -> Prior:
        return self._prior_ref[0]

    @abc.abstractmethod
    def direction(self, z: Tensor, cond: Conditioning, t: Tensor, noise: Tensor, window: TimestepWindow,
                  gen: torch.Generator, guidance: float) -> tuple[Tensor, dict[str, float]]:
        """The unweighted gradient direction [B, C, h, w] float32 and extra logs, for z [B, C, h, w]
        (detached, float32), t [B] long on z's device, noise ε [B, C, h, w] on z's device and the guidance
        scale s of this step; further random numbers come from `gen` (CPU)."""

    def forward(self, z: Tensor, cond: Conditioning, step: int, total_steps: int,
                gen: torch.Generator) -> LossOutput:
        prior, cfg = self.prior, self.cfg
        batch = z.shape[0]
        window = timestep_window(prior.num_train_timesteps, cfg.t_min, cfg.t_max, step, total_steps)
        t_cpu = sample_timesteps(batch, window, prior.shared_timestep, gen)
        noise = torch.randn(tuple(z.shape), generator=gen, dtype=torch.float32).to(z.device)
        t = t_cpu.to(z.device)
        guidance = cfg.guidance_scale.at(step, total_steps)
        direction, extra = self.direction(z.detach().float(), cond, t, noise, window, gen, guidance)
        if cfg.guidance_scale.kind != "constant":  # a scheduled scale is logged; a constant one is in recipe.yaml
            extra = {**extra, "guidance_scale": guidance}
        w = loss_weight(prior.alphas_cumprod, t, cfg.weighting.at(step)).view(-1, *([1] * (z.dim() - 1)))
        grad = torch.nan_to_num(w * direction)  # a NaN from the prior must not poison the generator
        if cfg.grad_clip is not None:
            clip = cfg.grad_clip.at(step, total_steps)
            grad = grad.clamp(-clip, clip)
        # Reparameterisation: the reference's ½‖z − sg(z − grad)‖² / B, i.e. value ½‖grad‖² / B and gradient
        # grad / B without backpropagating through the UNet. Written as (z − sg(z))·grad + ½‖grad‖² so the
        # gradient is exactly grad / B (z − (z − grad) rounds, and overflows for huge grad).
        zf = z.float()
        loss = (((zf - zf.detach()) * grad).sum() + 0.5 * (grad**2).sum()) / batch
        # Device values stay 0-d tensors (a float() here would wait for the device every step); the trainer
        # reads them every train.log_every steps.
        logs = {"loss": loss.detach(), "grad_norm": grad.detach().norm(),
                "t": float(t_cpu.float().mean()), "t_min": float(window.min_step),
                "t_max": float(window.max_step), **extra}
        return LossOutput(loss=loss, logs=logs)

    def optimizer_state_dict(self) -> dict[str, Any]:
        """State of the loss's own optimiser (VSD's LoRA); empty for losses that train nothing."""
        return {}

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `optimizer_state_dict()`; losses without an optimiser accept only an empty state."""
        if state:
            raise ValueError(f"{type(self).__name__} has no optimiser state to load, "
                             f"got keys {sorted(state)}")
