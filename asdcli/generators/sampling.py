"""Bilinear/trilinear feature sampling that can be differentiated twice on every device and torch version.

The eikonal and orientation regularisers train the field through its gradient (create_graph=True), so the
generators' feature lookups need a second derivative. PyTorch's grid_sample does not always have one: CUDA's
kernels lack it ("derivative for aten::grid_sampler_2d_backward is not implemented" stopped every SDF generator
on a GPU), and so does the CPU 3D kernel of torch 2.11. `grid_sample` below therefore computes the interpolation
from gathers and products whenever the sample coordinates carry a gradient (autograd differentiates that as often
as asked; on one CPU thread it is also a little faster than the fused kernel for forward + double backward), and
keeps F.grid_sample otherwise (rendering without regularisers, `asd generate`).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor


def grid_sample(inp: Tensor, grid: Tensor) -> Tensor:
    """F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=False), twice differentiable.

    inp [B, C, H, W] with grid [B, h, w, 2], or inp [B, C, D, H, W] with grid [B, d, h, w, 3]; grid holds
    (x, y[, z]) in [-1, 1] indexing (W, H[, D]). → [B, C, *grid.shape[1:-1]]."""
    if not (grid.requires_grad and torch.is_grad_enabled()):
        return F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return gather_sample(inp, grid)


def gather_sample(inp: Tensor, grid: Tensor) -> Tensor:
    """The interpolation of `grid_sample` written with gathers (any device; the reference for tests)."""
    b, c, *spatial = inp.shape
    dims = len(spatial)
    points = grid.reshape(b, -1, dims)  # component k indexes spatial axis dims − 1 − k
    flat = inp.reshape(b, c, -1)
    corners = [_corners(points[..., k], spatial[dims - 1 - k]) for k in range(dims)]
    out = None
    for pick in itertools.product((0, 1), repeat=dims):
        index, weight = 0, 1.0
        for k, side in enumerate(pick):
            i, w = corners[k][side]
            size = spatial[dims - 1 - k]
            inside = (i >= 0) & (i < size)  # zero padding: corners outside the grid contribute nothing
            index = index + i.clamp(0, size - 1) * math.prod(spatial[dims - k:])
            weight = weight * w * inside
        term = flat.gather(2, index.unsqueeze(1).expand(b, c, -1)) * weight.unsqueeze(1).to(inp.dtype)
        out = term if out is None else out + term
    return out.view(b, c, *grid.shape[1:-1])


def _corners(coord: Tensor, size: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """((i0, w0), (i1, w1)): the two texel indices [B, N] along one axis and their linear weights.

    align_corners=False: −1 and 1 are the outer edges of the first and last texel."""
    pix = ((coord + 1) * size - 1) / 2
    low = pix.detach().floor()
    frac = pix - low  # carries the gradient wrt the coordinate
    low = low.long()
    return (low, 1 - frac), (low + 1, frac)
