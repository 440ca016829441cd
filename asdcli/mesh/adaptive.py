"""Coarse-to-fine sampling of SDF fields for isosurface extraction.

A full R³ grid spends almost every query far from the surface, where only the sign matters. We sample a grid
of every other point, interpolate it to R³ (trilinear), and query the field again only inside coarse cells
that the surface may cross: cells whose corners change sign or come within `band` coarse steps of the level
(an SDF changes by at most ~one unit per unit length, so a thin feature cannot hide inside a cell whose corners
are all farther than its diagonal), dilated by one cell. The band is widened by the field's steepest slope
measured on the coarse grid, so a field that is not (yet) a distance field — early in training, no eikonal
term — is refined more widely instead of losing thin parts. For a true SDF at 128³ about a quarter of the
points are queried.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from asdcli.mesh.grid import QUERY_CHUNK, QueryFn, grid_coordinates, values_of


def _interp_matrix(fine: int, coarse_idx: np.ndarray) -> np.ndarray:
    """[fine, coarse] linear-interpolation weights from coarse sample indices to every fine index."""
    pos = np.interp(np.arange(fine), coarse_idx, np.arange(len(coarse_idx)))
    lo = np.minimum(np.floor(pos).astype(int), len(coarse_idx) - 2)
    frac = pos - lo
    w = np.zeros((fine, len(coarse_idx)), dtype=np.float32)
    w[np.arange(fine), lo] = 1.0 - frac
    w[np.arange(fine), lo + 1] += frac
    return w


def _query_points(query_fn: QueryFn, points: np.ndarray, chunk: int, device) -> np.ndarray:
    out = np.empty(len(points), dtype=np.float32)
    for start in range(0, len(points), chunk):
        pts = torch.from_numpy(points[start:start + chunk]).to(device)
        value = values_of(query_fn, pts)
        out[start:start + len(pts)] = value.reshape(-1).float().cpu().numpy()
    return out


def max_slope(coarse: np.ndarray, spacing: float) -> float:
    """Largest |Δvalue| / spacing between neighbouring samples: ≈ 1 for a distance field."""
    finite = np.nan_to_num(coarse, nan=0.0, posinf=0.0, neginf=0.0)
    steps = [np.abs(np.diff(finite, axis=a)).max(initial=0.0) for a in range(3)]
    return float(max(steps)) / spacing


def _cells_to_refine(coarse: np.ndarray, spacing: float, band: float) -> np.ndarray:
    """[n-1]³ bool: coarse cells the level-0 surface may cross (sign change or near-zero corner), dilated.
    `band` is in coarse steps for a slope-1 field and grows with the measured slope."""
    corners = [coarse[a:a + coarse.shape[0] - 1, b:b + coarse.shape[1] - 1, c:c + coarse.shape[2] - 1]
               for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    lo, hi = np.minimum.reduce(corners), np.maximum.reduce(corners)
    near = np.minimum(np.abs(lo), np.abs(hi)) < band * spacing * max(1.0, max_slope(coarse, spacing))
    cells = ((lo <= 0) & (hi >= 0)) | near | ~np.isfinite(lo) | ~np.isfinite(hi)
    return ndimage.binary_dilation(cells, iterations=1)


def _fine_mask(cells: np.ndarray, resolution: int, coarse_idx: np.ndarray) -> np.ndarray:
    """Fine grid points that lie in (or on the faces of) refined coarse cells."""
    i = np.arange(resolution)
    right = np.clip(np.searchsorted(coarse_idx, i, side="right") - 1, 0, len(coarse_idx) - 2)
    left = np.clip(np.searchsorted(coarse_idx, i, side="left") - 1, 0, len(coarse_idx) - 2)
    mask = np.zeros((resolution,) * 3, dtype=bool)
    for ax in (right, left):
        for ay in (right, left):
            for az in (right, left):
                mask |= cells[np.ix_(ax, ay, az)]
    return mask


@torch.no_grad()
def sample_sdf_coarse_to_fine(query_fn: QueryFn, resolution: int, radius: float, level: float = 0.0,
                              chunk: int = QUERY_CHUNK, device: torch.device | str = "cpu",
                              band: float = 2.0) -> tuple[np.ndarray, float]:
    """SDF values on the R³ grid [R, R, R] (x-major) exact near the level set, interpolated elsewhere; also the
    fraction of grid points actually queried."""
    axis = grid_coordinates(resolution, radius)
    coarse_idx = np.unique(np.concatenate([np.arange(0, resolution, 2), [resolution - 1]]))
    ca = axis[coarse_idx]
    gx, gy, gz = np.meshgrid(ca, ca, ca, indexing="ij")
    coarse_pts = np.stack([gx, gy, gz], axis=-1).reshape(-1, 3)
    n = len(coarse_idx)
    coarse = _query_points(query_fn, coarse_pts, chunk, device).reshape(n, n, n) - level
    w = _interp_matrix(resolution, coarse_idx)
    fine = np.einsum("ia,jb,kc,abc->ijk", w, w, w, np.nan_to_num(coarse, nan=1.0), optimize=True)
    cells = _cells_to_refine(coarse, 2.0 * radius / (resolution - 1) * 2.0, band)
    mask = _fine_mask(cells, resolution, coarse_idx)
    ix, iy, iz = np.nonzero(mask)
    pts = np.stack([axis[ix], axis[iy], axis[iz]], axis=-1)
    fine[ix, iy, iz] = _query_points(query_fn, pts, chunk, device) - level
    queried = (n ** 3 + len(ix)) / resolution ** 3
    return (fine + level).astype(np.float32), queried
