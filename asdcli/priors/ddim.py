"""Deterministic DDIM sampling (η = 0) with classifier-free guidance, for pixel-space priors.

Used to look at what a prior draws (sample-quality evaluations); distillation itself never samples. The guidance
is the one the distillation losses use, ε̂ = ε_u + s·(ε_c − ε_u), and x̂0 is clipped to [−1, 1] at every step
with ε re-derived from the clipped x̂0, so a large scale cannot push the images out of range.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class PixelPrior(Protocol):
    """What `ddim_sample` needs of a prior: its noise schedule, its resolution and its noise prediction. Any
    `asdcli.priors.base.Prior` working in pixel space (3 channels, no VAE) has these."""

    alphas_cumprod: Tensor  # [T]
    image_size: int

    def predict_noise(self, z_t: Tensor, t: Tensor, text: Tensor) -> Tensor:
        """z_t [N, 3, S, S], t [N] long, text [N, L, D] → ε̂ [N, 3, S, S]."""


@torch.no_grad()
def ddim_sample(prior: PixelPrior, cond: Tensor, uncond: Tensor, scale: float, steps: int,
                gen: torch.Generator) -> Tensor:
    """Images [B, 3, S, S] in [0, 1] (S = prior.image_size) from `steps` DDIM steps, t evenly spaced from T − 1
    down to 0. cond/uncond [B, L, D]: text states of each image's two branches; one model call per step runs
    them together as [uncond; cond]. The starting noise [B, 3, S, S] is drawn from `gen` on the CPU."""
    a = prior.alphas_cumprod.float()
    b, s = cond.shape[0], prior.image_size
    ts = torch.linspace(len(a) - 1, 0, steps).round().long()
    x = torch.randn(b, 3, s, s, generator=gen)
    for i, t in enumerate(ts.tolist()):
        tt = torch.full((2 * b,), t, dtype=torch.long)
        eu, ec = prior.predict_noise(torch.cat([x, x]), tt, torch.cat([uncond, cond])).chunk(2)
        eps = eu + scale * (ec - eu)
        x0 = ((x - (1 - a[t]).sqrt() * eps) / a[t].sqrt()).clamp(-1, 1)
        eps = (x - a[t].sqrt() * x0) / (1 - a[t]).sqrt()  # consistent with the clipped x̂0
        a_prev = a[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return ((x + 1) / 2).clamp(0, 1)
