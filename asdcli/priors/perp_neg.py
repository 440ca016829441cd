"""View-dependent prompting and Perp-Neg weights (the reference's prompt-processor rules, §1.3).

Directions are indices into VIEWS. A view is "side" by default, "front" when |azimuth| < front_threshold,
"back" when |azimuth| > 180 − back_threshold and "overhead" when elevation > overhead_threshold; the rules are
applied in that order and the last match wins. Azimuths are wrapped to (−180, 180] first.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

VIEWS = ("side", "front", "back", "overhead")
VIEW_SUFFIXES = tuple(f", {v} view" for v in VIEWS)  # what view_prompt appends (text-cache suffixes)
SIDE, FRONT, BACK, OVERHEAD = range(4)

# Perp-Neg weight curves f(r) = a·exp(−b·r) + c (Armandpour et al., as used by the reference).
F_SB = (1.0, 0.5, -0.606)
F_FSB = (1.0, 0.5, 0.967)
F_FS = (4.0, 0.5, -2.426)
F_SF = (4.0, 0.5, -2.426)


def wrap_azimuth(azimuth: Tensor) -> Tensor:
    """Degrees wrapped to (−180, 180] (180 stays 180, −180 becomes 180)."""
    a = torch.remainder(azimuth.float(), 360.0)  # [0, 360)
    return torch.where(a > 180.0, a - 360.0, a)


def view_directions(elevation: Tensor, azimuth: Tensor, front_threshold: float = 45.0,
                    back_threshold: float = 45.0, overhead_threshold: float = 60.0) -> Tensor:
    """Direction index [B] (into VIEWS) for cameras at elevation/azimuth [B] degrees."""
    azi = wrap_azimuth(azimuth).abs()
    d = torch.full(azi.shape, SIDE, dtype=torch.long, device=azi.device)
    d = torch.where(azi < front_threshold, torch.full_like(d, FRONT), d)
    d = torch.where(azi > 180.0 - back_threshold, torch.full_like(d, BACK), d)
    return torch.where(elevation.to(azi.device).float() > overhead_threshold, torch.full_like(d, OVERHEAD), d)


DEFAULT_THRESHOLDS = (45.0, 45.0, 60.0)  # front, back, overhead (the reference's)
THRESHOLD_KEYS = ("front_threshold", "back_threshold", "overhead_threshold")
def resolve_view_thresholds(cfg: Any, trained: tuple[float, float, float] | None) -> tuple[float, float, float]:
    """(front, back, overhead) for a prior config: each None field takes the model's trained value (or the
    default). A set value that differs from what the model was trained with is kept, with a warning: its view
    captions then ask for pictures the model learned under other names."""
    base = trained or DEFAULT_THRESHOLDS
    given = [getattr(cfg, k, None) for k in THRESHOLD_KEYS]  # MVDream's config has none: it reads cameras
    out = tuple(float(base[i] if g is None else g) for i, g in enumerate(given))
    if trained is not None and out != tuple(trained):
        diff = ", ".join(f"prior.{k}: {o:g} (trained with {t:g})" for k, o, t in zip(THRESHOLD_KEYS, out, trained,
                                                                                   strict=True) if o != t)
        warnings.warn(f"{diff}; leave them unset to use the model's own", stacklevel=3)
    return out


def view_prompt(prompt: str, direction: int) -> str:
    """The prompt with its view suffix, e.g. "a cat, front view"."""
    return prompt + VIEW_SUFFIXES[direction]


def shifted_exp_decay(coeffs: tuple[float, float, float], r: Tensor) -> Tensor:
    a, b, c = coeffs
    return a * torch.exp(-b * r) + c


def perp_neg_plan(azimuth: Tensor, directions: Tensor, scale: float = -0.5) -> tuple[Tensor, Tensor, Tensor]:
    """How to mix the view embeddings of B images for Perp-Neg.

    Returns (pos_mix [B, 4], neg_index [B, 2], weights [B, 2]):
    - pos_mix: coefficients over VIEWS; the positive embedding is Σ_v pos_mix[:, v]·E_v.
    - neg_index: which VIEWS entry each negative uses; −1 means the unconditional embedding.
    - weights: the *effective* weights w_i in ε̂ = ε_u + s·(e_pos + Σ_i w_i·⊥(ε_neg_i − ε_u, e_pos)), i.e. the
      reference's processor weight (−f) times its guidance factor (−1·perp_neg), which equals scale·f.
    Front half (|azi| < 90): r = 1 − |azi|/90, pos = r·front + (1−r)·side, negatives [front, side] with
    f_fs(r), f_sf(1−r). Back half: r = 2 − |azi|/90, pos = r·side + (1−r)·back, negatives [side, front] with
    f_sb(r), f_fsb(r). Overhead views: pos = overhead, both weights 0.
    """
    azi = wrap_azimuth(azimuth).abs()
    b = azi.shape[0]
    front_half = azi < 90.0
    r = torch.where(front_half, 1.0 - azi / 90.0, 2.0 - azi / 90.0)
    mix = torch.zeros(b, len(VIEWS), device=azi.device)
    mix[:, FRONT] = torch.where(front_half, r, torch.zeros_like(r))
    mix[:, SIDE] = torch.where(front_half, 1.0 - r, r)
    mix[:, BACK] = torch.where(front_half, torch.zeros_like(r), 1.0 - r)
    neg = torch.where(front_half[:, None], torch.tensor([FRONT, SIDE], device=azi.device),
                      torch.tensor([SIDE, FRONT], device=azi.device))
    w = torch.stack([torch.where(front_half, shifted_exp_decay(F_FS, r), shifted_exp_decay(F_SB, r)),
                     torch.where(front_half, shifted_exp_decay(F_SF, 1.0 - r), shifted_exp_decay(F_FSB, r))],
                    dim=1) * scale
    over = directions.to(azi.device) == OVERHEAD
    mix[over] = torch.tensor([0.0, 0.0, 0.0, 1.0], device=azi.device)
    neg = torch.where(over[:, None], torch.full_like(neg, -1), neg)
    w = torch.where(over[:, None], torch.zeros_like(w), w)
    return mix, neg, w

