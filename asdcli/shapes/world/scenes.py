"""Analytic ShapesWorld scenes: signed distance and colour of every SceneSpec, batched over many scenes.

World: z is up (as the cameras). Every primitive is centred on its own bounding box and axis-aligned; sizes
follow the feasibility study (sphere r 0.6, cube half-size 0.45, …), times 0.7 ("small") or 1.25 ("large").
Pairs: "A on top of B" rests A's bounding box on B's (A along +z); "A next to B" puts A at −y and B at +y with a
gap (−y is the left of the azimuth-0 view). The combined bounding box is then centred at the origin, and a pair is
scaled down until its bounding radius (exact, about the origin) is ≤ FIT_RADIUS, so it fits in [−1, 1]³ with a
margin seen from any angle. Single objects are never scaled (the largest, a large pyramid, reaches radius 1.08,
its corners at ±0.625). Framing: a camera at distance d, vertical fov f sees all of a scene of radius ρ iff
ρ < d·sin(f/2), i.e. ρ < s·cos(f/2) for the relative distance d = s / tan(f/2).

Sphere, cube, cylinder, cone, capsule and torus have exact SDFs; the pyramid's (max over its face planes) is
exact inside and a lower bound outside, which is all that sphere tracing and occupancy need.
Occupancy grids: occ[i, j, k] is the voxel centred at (x_i, y_j, z_k), x_i = −radius + (i + ½)·2·radius/R.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from asdcli.shapes.world.grammar import COLORS, SHAPES, SIZES, SceneSpec, parse_prompt

FIT_RADIUS = 0.85  # bounding radius of a pair after fitting (scene units): inside [-1, 1]^3 from any angle
NEXT_TO_GAP = 0.1  # gap between the bounding boxes of a "next to" pair, before fitting
CUBE_HALF, CUBE_ROUND = 0.45, 0.04
CYL_R, CYL_HH = 0.45, 0.5
CONE_R, CONE_HH = 0.55, 0.55
TORUS_R, TORUS_TUBE = 0.45, 0.18
CAPSULE_R, CAPSULE_HH = 0.32, 0.33  # radius, half-length of the inner segment
PYR_HALF, PYR_HH = 0.5, 0.5  # half base width, half height

# Bounding-box half-extents (x, y, z) of each primitive at scale 1.
HALF_EXTENTS: dict[str, tuple[float, float, float]] = {
    "sphere": (0.6, 0.6, 0.6),
    "cube": (CUBE_HALF, CUBE_HALF, CUBE_HALF),
    "cylinder": (CYL_R, CYL_R, CYL_HH),
    "cone": (CONE_R, CONE_R, CONE_HH),
    "torus": (TORUS_R + TORUS_TUBE,) * 2 + (TORUS_TUBE,),
    "capsule": (CAPSULE_R, CAPSULE_R, CAPSULE_HH + CAPSULE_R),
    "pyramid": (PYR_HALF, PYR_HALF, PYR_HH),
}


def _box_volume(half: float, rounding: float) -> float:
    # Inner box of side L grown by a ball of radius ρ: core + 6 face slabs + 12 quarter-cylinders + 8 octants.
    side = 2 * (half - rounding)
    return side**3 + 6 * side**2 * rounding + 3 * math.pi * rounding**2 * side + 4 / 3 * math.pi * rounding**3


VOLUMES: dict[str, float] = {  # at scale 1
    "sphere": 4 / 3 * math.pi * 0.6**3,
    "cube": _box_volume(CUBE_HALF, CUBE_ROUND),
    "cylinder": math.pi * CYL_R**2 * 2 * CYL_HH,
    "cone": math.pi * CONE_R**2 * 2 * CONE_HH / 3,
    "torus": 2 * math.pi**2 * TORUS_R * TORUS_TUBE**2,
    "capsule": math.pi * CAPSULE_R**2 * 2 * CAPSULE_HH + 4 / 3 * math.pi * CAPSULE_R**3,
    "pyramid": (2 * PYR_HALF) ** 2 * 2 * PYR_HH / 3,
}


def _segment_distance(px: Tensor, pz: Tensor, a: tuple[float, float], b: tuple[float, float]) -> Tensor:
    """Distance from 2D points (px, pz) [M] to the segment a–b."""
    bx, bz = b[0] - a[0], b[1] - a[1]
    qx, qz = px - a[0], pz - a[1]
    h = ((qx * bx + qz * bz) / (bx * bx + bz * bz)).clamp(0.0, 1.0)
    return torch.hypot(qx - h * bx, qz - h * bz)


def sdf_sphere(q: Tensor) -> Tensor:
    return q.norm(dim=-1) - 0.6


def sdf_cube(q: Tensor) -> Tensor:
    d = q.abs() - (CUBE_HALF - CUBE_ROUND)
    return d.clamp(min=0).norm(dim=-1) + d.amax(dim=-1).clamp(max=0) - CUBE_ROUND


def sdf_cylinder(q: Tensor) -> Tensor:
    rho = torch.hypot(q[:, 0], q[:, 1])
    d = torch.stack([rho - CYL_R, q[:, 2].abs() - CYL_HH], dim=-1)
    return d.clamp(min=0).norm(dim=-1) + d.amax(dim=-1).clamp(max=0)


def sdf_cone(q: Tensor) -> Tensor:
    # In the meridian half-plane (ρ, z) the boundary is the base segment and the slanted side; the nearest
    # surface point of a solid of revolution lies in the point's own half-plane, so this is exact.
    rho, z = torch.hypot(q[:, 0], q[:, 1]), q[:, 2]
    base = _segment_distance(rho, z, (0.0, -CONE_HH), (CONE_R, -CONE_HH))
    side = _segment_distance(rho, z, (CONE_R, -CONE_HH), (0.0, CONE_HH))
    inside = (z >= -CONE_HH) & (rho * 2 * CONE_HH <= CONE_R * (CONE_HH - z))
    return torch.where(inside, -1.0, 1.0) * torch.minimum(base, side)


def sdf_torus(q: Tensor) -> Tensor:
    return torch.hypot(torch.hypot(q[:, 0], q[:, 1]) - TORUS_R, q[:, 2]) - TORUS_TUBE


def sdf_capsule(q: Tensor) -> Tensor:
    z = q[:, 2] - q[:, 2].clamp(-CAPSULE_HH, CAPSULE_HH)
    return torch.hypot(torch.hypot(q[:, 0], q[:, 1]), z) - CAPSULE_R


def sdf_pyramid(q: Tensor) -> Tensor:
    # Side plane through the apex (0, 0, h) and the base edge x = b, z = −h: normal ∝ (2h, 0, b).
    norm = math.hypot(2 * PYR_HH, PYR_HALF)
    side = (2 * PYR_HH * q[:, :2].abs().amax(dim=-1) + PYR_HALF * (q[:, 2] - PYR_HH)) / norm
    return torch.maximum(side, -q[:, 2] - PYR_HH)


PRIMITIVES = {"sphere": sdf_sphere, "cube": sdf_cube, "cylinder": sdf_cylinder, "cone": sdf_cone,
              "torus": sdf_torus, "capsule": sdf_capsule, "pyramid": sdf_pyramid}
_PRIM_BY_ID = [PRIMITIVES[s] for s in SHAPES]


# Extreme points of each primitive at scale 1, for its exact bounding radius about any centre: rings (a, z0)
# (horizontal circles of radius a at height z0 around the shape's axis), single points, and an inflation
# radius added to both (the rounding of the cube, the tube of the torus, the radius of sphere and capsule).
_EXTREMES: dict[str, tuple[list[tuple[float, float]], list[tuple[float, float, float]], float]] = {
    "sphere": ([(0.0, 0.0)], [], 0.6),
    "cube": ([], [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], CUBE_ROUND),
    "cylinder": ([(CYL_R, -CYL_HH), (CYL_R, CYL_HH)], [], 0.0),
    "cone": ([(CONE_R, -CONE_HH), (0.0, CONE_HH)], [], 0.0),
    "torus": ([(TORUS_R, 0.0)], [], TORUS_TUBE),
    "capsule": ([(0.0, -CAPSULE_HH), (0.0, CAPSULE_HH)], [], CAPSULE_R),
    "pyramid": ([(0.0, PYR_HH)], [(x * PYR_HALF, y * PYR_HALF, -PYR_HH) for x in (-1, 1) for y in (-1, 1)], 0.0),
}
_CUBE_INNER = CUBE_HALF - CUBE_ROUND
_TETRA = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])


@dataclass(frozen=True)
class PlacedObject:
    shape: str
    color: tuple[float, float, float]
    center: tuple[float, float, float]
    scale: float

    @property
    def half_extent(self) -> tuple[float, float, float]:
        return tuple(h * self.scale for h in HALF_EXTENTS[self.shape])

    def radius(self) -> float:
        """Largest distance from the origin to a point of the object (exact)."""
        rings, points, inflate = _EXTREMES[self.shape]
        c, s = self.center, self.scale
        unit = _CUBE_INNER if self.shape == "cube" else 1.0
        # A ring's farthest point lies in the vertical plane through the ring's axis and the origin.
        r = [math.hypot(math.hypot(c[0], c[1]) + s * a, c[2] + s * z0) for a, z0 in rings]
        r += [math.hypot(c[0] + s * unit * p[0], c[1] + s * unit * p[1], c[2] + s * unit * p[2]) for p in points]
        return max(r) + s * inflate


def _bbox(objs: list[tuple[str, float]], centers: list[list[float]]) -> tuple[list[float], list[float]]:
    pairs = list(zip(centers, objs, strict=True))
    lo = [min(c[d] - HALF_EXTENTS[shape][d] * sc for c, (shape, sc) in pairs) for d in range(3)]
    hi = [max(c[d] + HALF_EXTENTS[shape][d] * sc for c, (shape, sc) in pairs) for d in range(3)]
    return lo, hi


@cache
def place(spec: SceneSpec) -> tuple[PlacedObject, ...]:
    """Objects of a scene with their centres and scales: relation applied, bounding box centred at the origin,
    and pairs scaled down until their bounding radius is ≤ FIT_RADIUS (single objects keep their size)."""
    objs = [(o.shape, SIZES.get(o.size, 1.0)) for o in spec.objects]
    colors = [COLORS[o.color] for o in spec.objects]
    centers = [[0.0, 0.0, 0.0] for _ in objs]
    if spec.relation is not None:
        (a, sa), (b, sb) = objs
        ha, hb = HALF_EXTENTS[a], HALF_EXTENTS[b]
        if spec.relation == "on top of":
            centers[0][2] = hb[2] * sb + ha[2] * sa
        else:
            centers[0][1] = -(hb[1] * sb + ha[1] * sa + NEXT_TO_GAP)
    lo, hi = _bbox(objs, centers)
    centers = [[c[d] - (lo[d] + hi[d]) / 2 for d in range(3)] for c in centers]
    placed = [PlacedObject(shape, col, tuple(c), sc)
              for (shape, sc), col, c in zip(objs, colors, centers, strict=True)]
    fit = min(1.0, FIT_RADIUS / max(o.radius() for o in placed)) if len(placed) > 1 else 1.0
    return tuple(PlacedObject(o.shape, o.color, tuple(fit * x for x in o.center), fit * o.scale) for o in placed)


def scene_radius(spec: SceneSpec) -> float:
    """Bounding radius of the placed scene about the origin. A camera at distance d with vertical field of
    view f frames the whole scene iff radius < d·sin(f/2); with d = s / tan(f/2) that is radius < s·cos(f/2)."""
    return max(o.radius() for o in place(spec))


def scene_volume(spec: SceneSpec) -> float:
    """Exact volume of a scene (objects never overlap: stacked boxes touch, side-by-side ones have a gap)."""
    return sum(VOLUMES[o.shape] * o.scale**3 for o in place(spec))


def scene_bounds(spec: SceneSpec) -> tuple[list[float], list[float]]:
    """Axis-aligned bounding box (lo, hi) of the placed scene."""
    objs = place(spec)
    lo = [min(o.center[d] - o.half_extent[d] for o in objs) for d in range(3)]
    hi = [max(o.center[d] + o.half_extent[d] for o in objs) for d in range(3)]
    return lo, hi


class SceneBatch:
    """S scenes as tensors, each with up to K = 2 objects (empty slots have shape id −1).

    shape_id [S, K] long; color [S, K, 3]; center [S, K, 3]; scale [S, K]; lo, hi [S, 3] bounding boxes.
    """

    def __init__(self, specs: list[SceneSpec], device: torch.device | str = "cpu"):
        placed = [place(s) for s in specs]
        k = max(len(p) for p in placed)
        shape_id = torch.full((len(specs), k), -1, dtype=torch.long)
        color, center = torch.zeros(len(specs), k, 3), torch.zeros(len(specs), k, 3)
        scale = torch.ones(len(specs), k)
        for i, objs in enumerate(placed):
            for j, o in enumerate(objs):
                shape_id[i, j] = SHAPES.index(o.shape)
                color[i, j], center[i, j], scale[i, j] = torch.tensor(o.color), torch.tensor(o.center), o.scale
        bounds = [scene_bounds(s) for s in specs]
        self.specs = list(specs)
        self._shapes_py, self._scales_py = shape_id.tolist(), scale.tolist()  # host copies: no device syncs
        self.shape_id, self.color, self.center, self.scale = (t.to(device) for t in (shape_id, color, center,
                                                                                    scale))
        self.lo = torch.tensor([b[0] for b in bounds], device=device)
        self.hi = torch.tensor([b[1] for b in bounds], device=device)

    def __len__(self) -> int:
        return len(self.specs)

    def signature(self, i: int) -> tuple[int, ...]:
        """Shape ids of scene i's slots: scenes with equal signatures evaluate without shape masking."""
        return tuple(self._shapes_py[i])

    def object_sdf(self, points: Tensor, scene: Tensor | int) -> Tensor:
        """Distance to each object: points [M, 3] of scenes `scene` ([M] long, or one int for all) → [M, K]
        (+inf for empty slots)."""
        out = torch.full((points.shape[0], self.shape_id.shape[1]), math.inf, device=points.device)
        for k in range(self.shape_id.shape[1]):
            if isinstance(scene, int):  # one scene: constants, no per-point gathers (the renderer's fast path)
                if self._shapes_py[scene][k] >= 0:
                    c, sc = self.center[scene, k], self._scales_py[scene][k]
                    out[:, k] = _PRIM_BY_ID[self._shapes_py[scene][k]]((points - c) / sc) * sc
                continue
            sid, scale = self.shape_id[scene, k], self.scale[scene, k]
            if sid.numel() == 0:
                continue
            q = (points - self.center[scene, k]) / scale[:, None]
            lo, hi = int(sid.min()), int(sid.max())
            if lo == hi:  # one shape in this slot (the renderer's chunks): no masking, no sort
                if lo >= 0:
                    out[:, k] = _PRIM_BY_ID[lo](q) * scale
                continue
            for u in sid.unique().tolist():
                if u >= 0:
                    idx = (sid == u).nonzero().squeeze(1)
                    out[idx, k] = _PRIM_BY_ID[u](q[idx]) * scale[idx]
        return out

    def sdf(self, points: Tensor, scene: Tensor | int) -> Tensor:
        """Scene SDF: points [M, 3], scene index [M] or int → [M] (the union is the minimum over objects)."""
        return self.object_sdf(points, scene).amin(dim=1)

    def sdf_and_color(self, points: Tensor, scene: Tensor | int) -> tuple[Tensor, Tensor]:
        """SDF [M] and the colour of the nearest object [M, 3] at points [M, 3] of scenes [M]."""
        d, k = self.object_sdf(points, scene).min(dim=1)
        return d, self.color[scene, k]

    def normals(self, points: Tensor, scene: Tensor | int, eps: float = 1e-3) -> Tensor:
        """Unit SDF gradients [M, 3] at points [M, 3] by finite differences on a tetrahedron (4 evaluations per
        point; unlike autograd, defined on the axes of revolution and at apexes)."""
        k = _TETRA.to(points.device)
        pts = (points[:, None, :] + eps * k).reshape(-1, 3)
        scene = scene if isinstance(scene, int) else scene.repeat_interleave(4)
        return torch.nn.functional.normalize(self.sdf(pts, scene).reshape(-1, 4) @ k, dim=-1)

    def occupancy_grids(self, res: int, radius: float = 1.0, chunk: int = 1 << 20) -> Tensor:
        """Inside-ness at voxel centres: [S, R, R, R] bool (see the module docstring for the indexing)."""
        pts = grid_points(res, radius, self.color.device).reshape(-1, 3)
        out = torch.empty(len(self), pts.shape[0], dtype=torch.bool, device=pts.device)
        for s in range(len(self)):
            for c in range(0, pts.shape[0], chunk):
                out[s, c:c + chunk] = self.sdf(pts[c:c + chunk], s) <= 0
        return out.reshape(len(self), res, res, res)


def grid_points(res: int, radius: float = 1.0, device: torch.device | str = "cpu") -> Tensor:
    """Voxel centres [R, R, R, 3]: entry [i, j, k] = (x_i, y_j, z_k)."""
    c = (torch.arange(res, dtype=torch.float32, device=device) + 0.5) * (2 * radius / res) - radius
    return torch.stack(torch.meshgrid(c, c, c, indexing="ij"), dim=-1)


class SceneField:
    """One scene's analytic field: sdf(points [N, 3]) → [N]; color(points) → [N, 3] in [0, 1]."""

    def __init__(self, spec: SceneSpec, device: torch.device | str = "cpu"):
        self.spec = spec
        self.batch = SceneBatch([spec], device)

    def sdf(self, points: Tensor) -> Tensor:
        return self.batch.sdf(points, 0)

    def color(self, points: Tensor) -> Tensor:
        return self.batch.sdf_and_color(points, 0)[1]

    def occupancy_grid(self, res: int, radius: float = 1.0) -> Tensor:
        """[R, R, R] bool, True inside (SDF ≤ 0) at voxel centres."""
        return self.batch.occupancy_grids(res, radius)[0]


def scene_field(spec: SceneSpec | str, device: torch.device | str = "cpu") -> SceneField:
    """The analytic field of a SceneSpec (or of a prompt, parsed first)."""
    if isinstance(spec, str):
        spec = parse_prompt(spec)
    return SceneField(spec, device)
