"""ShapesWorld ground-truth metrics (DESIGN §8): rotation-best volumetric IoU next to a blob baseline,
shape_r@1 retrieval, and colour error on the ground-truth surface.

Occupancy grids are [R, R, R] bool over [−radius, radius]³, occ[i, j, k] at (x_i, y_j, z_k) with voxel centres
x_i = −radius + (i + ½)·2·radius/R (`scenes.grid_points`); predicted grids must use the same layout.
A prior cannot know the azimuth of an object, so IoU is the best over rotations about the vertical (z) axis:
`angles` is a count (evenly spaced over 360°, from 0°) or a list of degrees.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from asdcli.shapes.world.grammar import SceneSpec, all_specs
from asdcli.shapes.world.scenes import SceneBatch, SceneField, grid_points, scene_bounds, scene_volume

Angles = int | Sequence[float]


def rotation_angles(angles: Angles = 16) -> Tensor:
    """Angles in degrees [A]: a count n gives 0, 360/n, …; a sequence is used as is."""
    if isinstance(angles, int):
        return torch.arange(angles, dtype=torch.float32) * (360.0 / angles)
    return torch.as_tensor(list(angles), dtype=torch.float32)


def gt_occupancy(specs: Sequence[SceneSpec], res: int, radius: float = 1.0) -> Tensor:
    """Ground-truth occupancy grids [S, R, R, R] bool of S scenes."""
    return SceneBatch(list(specs)).occupancy_grids(res, radius)


def iou(pred_occ: Tensor, gt_occ: Tensor) -> Tensor:
    """IoU of bool grids [..., R, R, R] → [...] (1 where both are empty)."""
    inter = (pred_occ & gt_occ).flatten(-3).sum(-1).float()
    union = (pred_occ | gt_occ).flatten(-3).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def rotate_occupancy(occ: Tensor, angles: Angles = 16) -> Tensor:
    """The grid [R, R, R] turned by each angle about the z axis (counter-clockwise seen from +z) → [A, R, R, R].

    A turn about z moves every z-slice alike, so this is a 2D bilinear resampling with z as channels (one
    sampling grid per angle, shared by all slices), thresholded at ½."""
    degrees = rotation_angles(angles)
    quarter = torch.remainder(degrees, 90.0) == 0
    if bool(quarter.any()):  # multiples of 90° are exact index permutations: no resampling
        out = torch.empty(len(degrees), *occ.shape, dtype=torch.bool, device=occ.device)
        for a in quarter.nonzero().squeeze(1).tolist():
            out[a] = torch.rot90(occ, int(degrees[a] // 90) % 4, dims=(0, 1))
        if not bool(quarter.all()):
            out[~quarter] = rotate_occupancy(occ, degrees[~quarter].tolist())
        return out
    res = occ.shape[-1]
    theta = torch.deg2rad(degrees).to(occ.device)
    c = (torch.arange(res, dtype=torch.float32, device=occ.device) + 0.5) * (2.0 / res) - 1.0
    x, y = torch.meshgrid(c, c, indexing="ij")  # output voxel (i, j) in normalised units
    cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
    # Voxel x of the turned grid holds voxel R(−θ)·x of the input.
    src_x, src_y = cos * x + sin * y, -sin * x + cos * y
    grid = torch.stack([src_y, src_x], dim=-1)  # grid_sample's (W, H) order; image rows are x, columns y
    img = occ.float().permute(2, 0, 1)[None].expand(len(theta), -1, -1, -1)  # [A, z, x, y]
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.permute(0, 2, 3, 1) > 0.5


def iou_matrix(pred_occs: Sequence[Tensor] | Tensor, gt_occs: Tensor, angles: Angles = 16,
               chunk: int = 8) -> Tensor:
    """Best-rotation IoU of every prediction against every scene: [P, S] (P grids [R, R, R]; gt [S, R, R, R]).

    Intersections of all rotations with all scenes are one matrix product per `chunk` predictions."""
    gt = gt_occs.flatten(1).float()  # [S, R³]
    gt_size = gt.sum(1)
    n_angles = len(rotation_angles(angles))
    out = torch.empty(len(pred_occs), gt.shape[0])
    for c in range(0, len(pred_occs), chunk):
        preds = pred_occs[c:c + chunk]
        rot = torch.empty(len(preds) * n_angles, gt.shape[1], device=gt.device)  # [chunk·A, R³]
        for i, p in enumerate(preds):
            rot[i * n_angles:(i + 1) * n_angles] = rotate_occupancy(p.to(gt.device), angles).flatten(1)
        inter = rot @ gt.T  # [chunk·A, S]; exact counts in float32 up to 2^24 voxels
        union = rot.sum(1, keepdim=True) + gt_size[None] - inter
        ious = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        out[c:c + chunk] = ious.reshape(-1, n_angles, gt.shape[0]).amax(1).cpu()
    return out


def iou_best_rotation(pred_occ: Tensor, gt_occ: Tensor, angles: Angles = 16) -> tuple[float, float]:
    """(best IoU, its angle in degrees) of the predicted grid turned about z against the GT grid [R, R, R]."""
    rot = rotate_occupancy(pred_occ, angles)
    ious = iou(rot, gt_occ[None])
    best = int(ious.argmax())
    return float(ious[best]), float(rotation_angles(angles)[best])


def iou_field(query_occ_fn: Callable[[Tensor], Tensor], spec: SceneSpec, res: int = 64, angles: Angles = 16,
              radius: float = 1.0, chunk: int = 1 << 18) -> tuple[float, float]:
    """Best-rotation IoU of a predicted field: query_occ_fn(points [N, 3]) → occupancy [N] (bool, or float
    thresholded at ½) is queried at turned grid points, so nothing is resampled. Returns (IoU, angle)."""
    gt = SceneField(spec).occupancy_grid(res, radius).reshape(-1)
    pts = grid_points(res, radius).reshape(-1, 3)
    best = (-1.0, 0.0)
    for angle in rotation_angles(angles).tolist():
        t = math.radians(angle)
        # The prediction turned by θ, at x, is the prediction at R(−θ)·x.
        rot = torch.tensor([[math.cos(t), math.sin(t), 0.0], [-math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]])
        q = pts @ rot.T
        occ = torch.cat([_as_bool(query_occ_fn(q[c:c + chunk])) for c in range(0, q.shape[0], chunk)])
        value = float(iou(occ[None].reshape(1, res, res, res), gt.reshape(1, res, res, res))[0])
        best = max(best, (value, angle), key=lambda v: v[0])
    return best


def _as_bool(x: Tensor) -> Tensor:
    x = x.detach().reshape(-1).cpu()
    return x if x.dtype == torch.bool else x > 0.5


@lru_cache(maxsize=1)
def world_mean_volume() -> float:
    """Mean scene volume over every prompt of the world (exact, from the primitives' volumes)."""
    specs = all_specs()
    return sum(scene_volume(s) for s in specs) / len(specs)


def blob_radius(specs: Sequence[SceneSpec] | None = None) -> float:
    """Radius of the sphere whose volume is the mean GT volume: over the whole world by default (one
    prompt-independent blob for every evaluation), or over `specs` when given."""
    volume = world_mean_volume() if specs is None else sum(scene_volume(s) for s in specs) / len(specs)
    return (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)


def blob_occupancy(res: int, radius: float = 1.0, blob: float | None = None) -> Tensor:
    """The centred blob [R, R, R] bool (radius `blob`, default `blob_radius()`)."""
    return grid_points(res, radius).norm(dim=-1) <= (blob_radius() if blob is None else blob)


def blob_baseline_iou(spec: SceneSpec, res: int = 64, blob: float | None = None, radius: float = 1.0) -> float:
    """IoU of the prompt-independent centred blob with the scene (a ball is unchanged by turns about z)."""
    return float(iou(blob_occupancy(res, radius, blob), SceneField(spec).occupancy_grid(res, radius)))


def _distinct_geometry(specs: Sequence[SceneSpec]) -> Tensor:
    """[S, S] bool: True where two scenes differ in shape (not merely in colour or in "next to" order)."""
    keys = [s.geometry_key() for s in specs]
    return torch.tensor([[a != b for b in keys] for a in keys])


def shape_hits_from_matrix(ious: Tensor, specs: Sequence[SceneSpec]) -> Tensor:
    """[P] bool: prediction p overlaps its own scene more than every rival scene ([P, P] IoU matrix)."""
    rivals = _distinct_geometry(specs)
    other = torch.where(rivals, ious, torch.full_like(ious, -1.0)).amax(1)
    return ious.diagonal() > other


def shape_r_at_1_from_matrix(ious: Tensor, specs: Sequence[SceneSpec]) -> float:
    """shape_r@1 from a [P, P] best-rotation IoU matrix (row: prediction, column: scene)."""
    return float(shape_hits_from_matrix(ious, specs).float().mean())


def shape_r_at_1(pred_occs: Sequence[Tensor], specs: Sequence[SceneSpec], angles: Angles = 16,
                 radius: float = 1.0) -> float:
    """Fraction of prompts whose predicted grid has a strictly higher best-rotation IoU with its own scene than
    with every other scene of the set (ties fail). Scenes of the same shape (differing only in colour, or a
    "next to" pair listed in the other order, which is the same scene turned 180°) are not rivals; a prompt
    with no rival in the set counts as a success."""
    gt = gt_occupancy(specs, pred_occs[0].shape[-1], radius)
    return shape_r_at_1_from_matrix(iou_matrix(pred_occs, gt, angles), specs)


def surface_points(spec: SceneSpec, n: int = 4096, seed: int = 0, band: float = 0.02) -> Tensor:
    """n points [n, 3] on the GT surface, about uniform in area: uniform samples in the bounding box kept within
    `band` of the surface, then projected onto it along the SDF gradient."""
    field = SceneField(spec)
    lo, hi = (torch.tensor(b) for b in scene_bounds(spec))
    gen = torch.Generator().manual_seed(seed)
    kept: list[Tensor] = []
    while sum(k.shape[0] for k in kept) < n:
        cand = lo - band + (hi - lo + 2 * band) * torch.rand(64 * n, 3, generator=gen)
        kept.append(cand[field.sdf(cand).abs() < band])
    pts = torch.cat(kept)[:n]
    for _ in range(4):
        pts = pts - field.sdf(pts)[:, None] * field.batch.normals(pts, 0)
    return pts


def surface_colours(pred_color_fn: Callable[[Tensor], Tensor], spec: SceneSpec, n: int = 4096,
                    seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(points [n, 3] on the GT surface, pred_color_fn there [n, 3], the GT colour there [n, 3]), on the CPU:
    the prediction's colour field is read where the true surface is, whatever its own geometry."""
    pts = surface_points(spec, n, seed)
    with torch.no_grad():
        pred = pred_color_fn(pts).detach().reshape(-1, 3).float().cpu()
    return pts, pred, SceneField(spec).color(pts)


def color_error(pred_color_fn: Callable[[Tensor], Tensor], spec: SceneSpec, n: int = 4096, seed: int = 0) -> float:
    """Mean absolute RGB error (over points and channels, in [0, 1]) of pred_color_fn(points [N, 3]) → [N, 3]
    against the GT colour on the GT surface (`surface_colours`)."""
    _, pred, truth = surface_colours(pred_color_fn, spec, n, seed)
    return float((pred - truth).abs().mean())


def shape_metrics(pred_occs: Sequence[Tensor], specs: Sequence[SceneSpec], angles: Angles = 16,
                  radius: float = 1.0) -> dict:
    """All occupancy metrics of P predictions of P scenes at once (GT grids built once):
    {"iou": [P], "blob_iou": [P], "iou_mean", "blob_iou_mean", "shape_r_at_1"}."""
    res = pred_occs[0].shape[-1]
    gt = gt_occupancy(specs, res, radius)
    ious = iou_matrix(pred_occs, gt, angles)
    blob = iou(blob_occupancy(res, radius)[None], gt)
    own = ious.diagonal()
    return {"iou": own.tolist(), "blob_iou": blob.tolist(), "iou_mean": float(own.mean()),
            "blob_iou_mean": float(blob.mean()), "shape_r_at_1": shape_r_at_1_from_matrix(ious, specs)}
