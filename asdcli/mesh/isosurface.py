"""Field → triangle mesh: marching cubes on a grid, vertex colours from the colour field, cleanup.

The field is sampled on a regular grid of `resolution`³ points over [−radius, radius]³ (world units, z up), in
chunks so that memory stays bounded at 256³ and beyond. The surface is the level set
- **SDF fields**: the zero level; inside is negative (right by construction);
- **density fields**: an automatic level (see `density_threshold`), or the caller's `threshold`.
Both cases are turned into one convention before marching cubes: a scalar volume that is negative inside, so
faces always wind counter-clockwise seen from outside (outward normals).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from asdcli.errors import UserError
from asdcli.mesh.adaptive import sample_sdf_coarse_to_fine
from asdcli.mesh.grid import QUERY_CHUNK, QueryFn, sample_grid


class EmptySurfaceError(UserError):
    """The field has no surface at the chosen level inside the box."""


@dataclass
class Mesh:
    """A vertex-coloured triangle mesh in world units (z up, centred on the origin as the field is).

    vertices: [V, 3] float32; faces: [F, 3] int64 (counter-clockwise seen from outside); colors: [V, 3] uint8.
    timings: seconds per stage ("query", "level", "marching_cubes", "colors", then cleanup stages).
    level: the field value of the surface (0 for SDFs; the automatic or given density threshold).
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    level: float | None = None

    def derived(self, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> Mesh:
        """A new mesh from cleanup of this one: same level, a copy of the timings."""
        return Mesh(vertices, faces, colors, dict(self.timings), self.level)

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])


def density_threshold(density: np.ndarray, spacing: float, opacity: float = 0.5,
                      max_lines: int = 128) -> float:
    """Automatic surface level for a density field: the density at which the field *looks* solid.

    A ray entering the box along a grid line accumulates optical depth ∫σ ds (trapezoid rule over the grid
    samples); the rendered surface is where its opacity 1 − exp(−∫σ ds) first reaches `opacity` (0.5). We find
    that point on every grid line of all six axis directions that gets that opaque, read the density there
    (linear interpolation between samples) and return the median. So the level follows the field's own scale
    (no fixed 25 as in threestudio, which is right for one training setup only), does not depend on the grid
    resolution once the field is resolved, and for a step-like field it lands between the two samples of
    the step. density: [R, R, R] activated densities σ ≥ 0 in 1/world-unit; spacing: grid step (world units).
    Lines are taken with a transverse stride so that at most about max_lines² lines per direction are traced
    (a median needs no more; it keeps this stage below marching cubes' cost at 256³).
    """
    tau = -math.log(1.0 - opacity)
    finite_max = float(np.max(density, where=np.isfinite(density), initial=0.0))
    density = np.nan_to_num(density.astype(np.float32), nan=0.0, posinf=finite_max).clip(min=0.0)
    levels = []
    stride = max(1, density.shape[0] // max_lines)
    for axis in range(3):
        lines = np.moveaxis(density, axis, -1)[::stride, ::stride].reshape(-1, density.shape[axis])
        for direction in (lines, lines[:, ::-1]):
            seg = 0.5 * spacing * (direction[:, :-1] + direction[:, 1:])  # optical depth of each segment
            depth_after = np.cumsum(seg, axis=1)
            hit = depth_after >= tau
            rows = np.flatnonzero(hit.any(axis=1))
            k = hit[rows].argmax(axis=1)  # first segment (between samples k and k+1) that reaches tau
            depth_before = np.where(k > 0, depth_after[rows, np.maximum(k - 1, 0)], 0.0)
            frac = (tau - depth_before) / np.maximum(seg[rows, k], 1e-20)
            levels.append(direction[rows, k] + frac * (direction[rows, k + 1] - direction[rows, k]))
    levels = np.concatenate(levels)
    if levels.size == 0:
        raise EmptySurfaceError(f"the density field never reaches {opacity:.0%} opacity inside the box, so "
                                "it has no visible surface: check the checkpoint, or pass a threshold")
    return float(np.median(levels))


def _inside_negative(values: np.ndarray, field_type: str, threshold: float | None,
                     spacing: float) -> tuple[np.ndarray, float]:
    """Volume that is negative inside and the level used in the field's own units."""
    if field_type == "sdf":
        level = 0.0 if threshold is None else float(threshold)
        volume = values - level if level != 0.0 else values
    elif field_type == "density":
        level = density_threshold(values, spacing) if threshold is None else float(threshold)
        volume = level - values
    else:
        raise UserError(f"unknown field_type {field_type!r}: use 'sdf' or 'density'")
    volume = volume.astype(np.float32, copy=False)
    finite = np.isfinite(volume)
    if not finite.all():
        # NaN (a diverged field) counts as outside, so it can never create a surface of its own; ±inf keep
        # their side but become finite, so marching cubes interpolates sensibly next to them.
        outside = float(np.max(np.abs(volume), where=finite, initial=0.0)) + 1.0
        volume = np.nan_to_num(volume, nan=outside, posinf=outside, neginf=-outside)
    return volume, level


def marching_cubes(volume: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Zero level set of an inside-negative volume [R, R, R] sampled on `grid_coordinates`.

    The volume is padded with one layer of "outside" so that shapes cut by the box are closed, not open.
    Returns vertices [V, 3] float32 (world units) and faces [F, 3] int64 with outward winding.
    """
    # lazy: scikit-image loads when a mesh is extracted, not with this module (imported by asd eval too)
    from skimage.measure import marching_cubes as skimage_marching_cubes

    resolution = volume.shape[0]
    if not (volume.min() < 0.0 < volume.max()):
        raise EmptySurfaceError("the field has no surface inside the box (it is all inside or all outside at "
                                "this level): check the checkpoint, the radius, or pass another threshold")
    spacing = 2.0 * radius / (resolution - 1)
    padded = np.pad(volume, 1, mode="constant", constant_values=float(volume.max()))
    verts, faces, _, _ = skimage_marching_cubes(padded, level=0.0, spacing=(spacing,) * 3,
                                                allow_degenerate=False, gradient_direction="descent")
    verts = verts - (radius + spacing)  # undo the padding offset and move the grid's first sample to −radius
    # Caps closing a cut shape fall a sliver outside the box (towards the padding): put them on its faces.
    verts = np.clip(verts, -radius, radius)
    return verts.astype(np.float32), faces.astype(np.int64)


@torch.no_grad()
def query_colors(query_fn: QueryFn, vertices: np.ndarray, chunk: int = QUERY_CHUNK,
                 device: torch.device | str = "cpu") -> np.ndarray:
    """Colour field at vertices [V, 3] → [V, 3] uint8."""
    colors = np.empty((len(vertices), 3), dtype=np.uint8)
    for start in range(0, len(vertices), chunk):
        points = torch.from_numpy(vertices[start:start + chunk]).to(device)
        _, rgb = query_fn(points)
        rgb = rgb.reshape(-1, 3).float().clamp(0.0, 1.0).cpu().numpy()
        colors[start:start + len(points)] = np.round(rgb * 255.0).astype(np.uint8)
    return colors


def extract_mesh(query_fn: QueryFn, resolution: int, radius: float, field_type: Literal["sdf", "density"],
                 threshold: float | None = None, chunk: int = QUERY_CHUNK,
                 device: torch.device | str = "cpu") -> Mesh:
    """Isosurface of a field as a vertex-coloured mesh (see the module docstring for the level rule).

    query_fn: points [N, 3] → (value [N], rgb [N, 3]); value is a signed distance (inside negative) for "sdf"
    and an activated density σ ≥ 0 (what the renderer integrates) for "density". Evaluated under
    torch.no_grad, in chunks of `chunk` points, on `device`. `threshold`: the density level (default:
    automatic), or for SDFs an offset of the zero level (> 0 dilates).
    The returned mesh's `timings` hold the seconds spent querying the grid ("query"), choosing the level and
    converting the volume ("level"), in marching cubes ("marching_cubes") and on vertex colours ("colors").
    """
    if resolution < 2:
        raise UserError(f"mesh resolution must be at least 2, got {resolution}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if field_type == "sdf" and resolution >= 32:
        level = 0.0 if threshold is None else float(threshold)
        values, _ = sample_sdf_coarse_to_fine(query_fn, resolution, radius, level, chunk, device)
    else:
        values = sample_grid(query_fn, resolution, radius, chunk, device)
    timings["query"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    volume, level = _inside_negative(values, field_type, threshold, 2.0 * radius / (resolution - 1))
    timings["level"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    vertices, faces = marching_cubes(volume, radius)
    timings["marching_cubes"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    colors = query_colors(query_fn, vertices, chunk, device)
    timings["colors"] = time.perf_counter() - t0
    return Mesh(vertices, faces, colors, timings, level)


def _subset(mesh: Mesh, keep_faces: np.ndarray) -> Mesh:
    """The mesh restricted to faces[keep_faces], with unreferenced vertices dropped and indices remapped."""
    faces = mesh.faces[keep_faces]
    used, inverse = np.unique(faces.reshape(-1), return_inverse=True)
    return mesh.derived(mesh.vertices[used], inverse.reshape(-1, 3).astype(np.int64), mesh.colors[used])


def remove_floaters(mesh: Mesh, min_fraction: float = 0.02) -> Mesh:
    """Drop connected components with fewer than `min_fraction` of all faces (the largest one is always kept).

    Components are vertex-connected (scipy's connected_components on the edge graph). The default keeps a
    small second object of a pair ("a cube next to a small sphere") and removes the specks that score
    distillation leaves.
    """
    # lazy: scipy.sparse is slow to import: only floater removal needs it
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if mesh.num_faces == 0:
        return mesh
    start = time.perf_counter()
    edges = np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])),
                       shape=(mesh.num_vertices, mesh.num_vertices))
    _, labels = connected_components(graph, directed=False)
    face_label = labels[mesh.faces[:, 0]]
    sizes = np.bincount(face_label)
    keep_label = (sizes >= min_fraction * mesh.num_faces) | (sizes == sizes.max())
    cleaned = _subset(mesh, keep_label[face_label])
    cleaned.timings["remove_floaters"] = time.perf_counter() - start
    return cleaned


def decimate(mesh: Mesh, max_faces: int, method: Literal["auto", "quadric", "cluster"] = "auto") -> Mesh:
    """At most `max_faces` faces. Meshes already small enough come back unchanged.

    "quadric": trimesh's simplify_quadric_decimation (needs the optional `fast_simplification` package); the
    simplifier drops vertex colours, so each new vertex takes the colour of the nearest original vertex.
    "cluster": vertex clustering on a uniform grid (no extra dependency; coarser, loses thin features).
    "auto": quadric when fast_simplification is importable, clustering otherwise.
    """
    if mesh.num_faces <= max_faces:
        return mesh
    if max_faces < 4:
        raise UserError(f"max_faces must be at least 4, got {max_faces}")
    try:
        import fast_simplification  # noqa: F401
        have_quadric = True
    except ImportError:
        have_quadric = False
    if method == "auto":
        method = "quadric" if have_quadric else "cluster"
    elif method == "quadric" and not have_quadric:
        raise UserError("quadric decimation needs the fast-simplification package: pip install "
                        "fast-simplification, or use the 'cluster' method")
    start = time.perf_counter()
    out = _decimate_quadric(mesh, max_faces) if method == "quadric" else _decimate_cluster(mesh, max_faces)
    out.timings["decimate"] = time.perf_counter() - start
    return out


def _decimate_quadric(mesh: Mesh, max_faces: int) -> Mesh:
    # lazy: trimesh and scipy.spatial only for quadric decimation
    import trimesh
    from scipy.spatial import cKDTree

    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    simple = tm.simplify_quadric_decimation(face_count=max_faces)
    vertices = np.asarray(simple.vertices, dtype=np.float32)
    _, nearest = cKDTree(mesh.vertices).query(vertices)
    faces = np.asarray(simple.faces, dtype=np.int64)
    return mesh.derived(vertices, faces, mesh.colors[nearest])


def _cluster_once(mesh: Mesh, cell: float) -> Mesh:
    """Merge all vertices in each cube of side `cell` (mean position and colour); drop collapsed and
    duplicate faces."""
    keys = np.floor(mesh.vertices / cell).astype(np.int64)
    _, cluster, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    cluster = cluster.reshape(-1)
    vertices = np.zeros((len(counts), 3), dtype=np.float64)
    colors = np.zeros((len(counts), 3), dtype=np.float64)
    np.add.at(vertices, cluster, mesh.vertices)
    np.add.at(colors, cluster, mesh.colors)
    faces = cluster[mesh.faces]
    alive = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    faces = faces[alive]
    # Two faces over the same three clusters (in any order) are the same triangle after merging: keep one.
    _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    colors /= counts[:, None]
    if np.issubdtype(mesh.colors.dtype, np.integer):
        colors = np.round(colors)
    merged = mesh.derived((vertices / counts[:, None]).astype(np.float32), faces[np.sort(first)],
                          colors.astype(mesh.colors.dtype))
    return _subset(merged, np.ones(merged.num_faces, dtype=bool))


def _decimate_cluster(mesh: Mesh, max_faces: int) -> Mesh:
    # A closed surface of area A tiled by cells of side c has about 2·A/c² triangles after clustering.
    tri = mesh.vertices[mesh.faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    cell = math.sqrt(2.0 * max(float(area), 1e-12) / max_faces)
    out = _cluster_once(mesh, cell)
    while out.num_faces > max_faces:  # the estimate is approximate: grow the cells until the budget is met
        cell *= 1.25
        out = _cluster_once(mesh, cell)
    return out
