"""Isosurface extraction, cleanup and mesh files (GLB checked with pygltflib and, when present, Khronos)."""

import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from asdcli.errors import UserError
from asdcli.mesh import export as export_module
from asdcli.mesh.export import WORLD_TO_Y_UP, write_mesh
from asdcli.mesh.grid import sample_grid
from asdcli.mesh.isosurface import (
    EmptySurfaceError,
    Mesh,
    decimate,
    extract_mesh,
    remove_floaters,
)

trimesh = pytest.importorskip("trimesh")


def _color(points):
    return (points * 0.5 + 0.5).clamp(0.0, 1.0)


def sphere_sdf(points, centre=(0.0, 0.0, 0.0), radius=0.5):
    return (points - torch.tensor(centre)).norm(dim=-1) - radius, _color(points)


def two_spheres(points):
    big = (points - torch.tensor([-0.2, 0.0, 0.0])).norm(dim=-1) - 0.5
    speck = (points - torch.tensor([0.7, 0.0, 0.0])).norm(dim=-1) - 0.05
    return torch.minimum(big, speck), _color(points)


def soft_density(points, scale=200.0, width=0.02):
    """A density sphere with a logistic wall: σ = scale · sigmoid(−sdf / width)."""
    sdf = points.norm(dim=-1) - 0.5
    return scale * torch.sigmoid(-sdf / width) + 1e-3, _color(points)


def _trimesh(mesh):
    return trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)


def _mean_radius(mesh):
    return float(np.linalg.norm(mesh.vertices, axis=1).mean())


def test_sdf_sphere_is_closed_outward_and_coloured():
    mesh = extract_mesh(sphere_sdf, 48, 1.0, "sdf")
    tm = _trimesh(mesh)
    assert tm.is_watertight and tm.is_winding_consistent
    # Outward winding gives a positive signed volume close to the analytic one.
    assert tm.volume == pytest.approx(4 / 3 * math.pi * 0.5 ** 3, rel=0.03)
    assert np.abs(np.linalg.norm(mesh.vertices, axis=1) - 0.5).max() < 2.0 / 47
    assert mesh.vertices.dtype == np.float32 and mesh.colors.dtype == np.uint8 and mesh.level == 0.0
    expected = np.round(np.clip(mesh.vertices * 0.5 + 0.5, 0, 1) * 255)
    assert np.abs(mesh.colors.astype(int) - expected).max() <= 1
    assert set(mesh.timings) == {"query", "level", "marching_cubes", "colors"}


def test_chunked_grid_matches_one_shot_and_respects_chunk():
    sizes = []

    def counting(points):
        sizes.append(len(points))
        return sphere_sdf(points)

    small = sample_grid(counting, 20, 1.0, chunk=999)
    assert max(sizes) <= 999 and sum(sizes) == 20 ** 3
    full = sample_grid(sphere_sdf, 20, 1.0, chunk=10 ** 6)
    np.testing.assert_array_equal(small, full)
    # Index order is [ix, iy, iz]: the corner (0, 0, R-1) is at (−r, −r, +r).
    axis = np.linspace(-1, 1, 20)
    assert full[0, 0, -1] == pytest.approx(math.sqrt(3) * abs(axis[0]) - 0.5, rel=1e-5)


def test_density_auto_threshold_finds_the_rendered_surface():
    # For σ = 200·sigmoid(−d/0.02) a ray from outside reaches opacity 0.5 at d ≈ +0.033 (radius ≈ 0.533).
    for resolution in (40, 64):
        mesh = extract_mesh(soft_density, resolution, 1.0, "density")
        assert 0.52 < _mean_radius(mesh) < 0.56
        assert 10.0 < mesh.level < 40.0
        assert _trimesh(mesh).volume > 0  # inside (high density) is inside: outward winding
    # An explicit threshold wins: σ = 100 is exactly the sdf = 0 sphere.
    mesh = extract_mesh(soft_density, 48, 1.0, "density", threshold=100.0)
    assert mesh.level == 100.0 and _mean_radius(mesh) == pytest.approx(0.5, abs=0.01)


def test_empty_field_and_bad_arguments_are_user_errors():
    with pytest.raises(EmptySurfaceError) as info:
        extract_mesh(lambda p: (p.norm(dim=-1) + 1.0, _color(p)), 16, 1.0, "sdf")
    assert isinstance(info.value, UserError)
    with pytest.raises(UserError):
        extract_mesh(lambda p: (torch.zeros(len(p)), _color(p)), 16, 1.0, "density")
    with pytest.raises(UserError):
        extract_mesh(sphere_sdf, 16, 1.0, "occupancy")


def test_shapes_cut_by_the_box_are_closed_and_nan_is_outside():
    mesh = extract_mesh(lambda p: sphere_sdf(p, radius=1.3), 24, 1.0, "sdf")
    assert _trimesh(mesh).is_watertight
    assert np.abs(mesh.vertices).max() <= 1.0 + 1e-5

    def with_nan_hole(points):
        value, rgb = sphere_sdf(points)
        return torch.where(points[:, 0] > 0.8, torch.full_like(value, float("nan")), value), rgb

    assert _trimesh(extract_mesh(with_nan_hole, 24, 1.0, "sdf")).is_watertight


def test_remove_floaters_drops_small_components_only():
    mesh = extract_mesh(two_spheres, 48, 1.0, "sdf")
    assert len(_trimesh(mesh).split(only_watertight=False)) == 2
    cleaned = remove_floaters(mesh)
    assert len(_trimesh(cleaned).split(only_watertight=False)) == 1
    assert cleaned.vertices[:, 0].max() < 0.35  # the speck at x = 0.7 is gone
    assert cleaned.faces.max() == cleaned.num_vertices - 1 and len(cleaned.colors) == cleaned.num_vertices
    assert remove_floaters(mesh, min_fraction=0.0).num_faces == mesh.num_faces


@pytest.mark.parametrize("method", ["cluster", "quadric"])
def test_decimate_meets_the_budget_and_keeps_the_shape(method):
    if method == "quadric":
        pytest.importorskip("fast_simplification")
    mesh = extract_mesh(sphere_sdf, 48, 1.0, "sdf")
    small = decimate(mesh, 800, method=method)
    assert 100 < small.num_faces <= 800
    assert small.colors.shape == (small.num_vertices, 3) and small.colors.dtype == np.uint8
    assert _mean_radius(small) == pytest.approx(0.5, abs=0.03)
    assert _trimesh(small).volume > 0
    assert "decimate" in small.timings
    assert decimate(mesh, mesh.num_faces) is mesh
    floats = decimate(Mesh(mesh.vertices, mesh.faces, mesh.colors / 255.0), 800, method=method)
    assert floats.colors.dtype.kind == "f" or method == "quadric"  # cluster averages keep float colours
    assert 0.0 <= floats.colors.min() and floats.colors.max() <= 1.0


def _tall_box_mesh():
    """A box 0.2 × 0.4 × 1.0 (world x, y, z) shifted to x = +0.5, coloured by position."""
    box = trimesh.creation.box(extents=(0.2, 0.4, 1.0))
    vertices = np.asarray(box.vertices, dtype=np.float32) + np.array([0.5, 0.0, 0.0], dtype=np.float32)
    colors = np.round(np.clip(vertices * 0.5 + 0.5, 0, 1) * 255).astype(np.uint8)
    return Mesh(vertices, np.asarray(box.faces, dtype=np.int64), colors)


def test_glb_is_valid_gltf_and_y_up(tmp_path):
    pygltflib = pytest.importorskip("pygltflib")
    path = write_mesh(_tall_box_mesh(), tmp_path / "box.glb")
    gltf = pygltflib.GLTF2().load(str(path))
    assert gltf.asset.version == "2.0" and len(gltf.meshes) == 1
    primitive = gltf.meshes[0].primitives[0]
    position = gltf.accessors[primitive.attributes.POSITION]
    assert position.min is not None and position.max is not None and position.count == 8
    extent = np.array(position.max) - np.array(position.min)
    # World z (tall, 1.0) becomes glTF Y; world x (the front, where the box was shifted) becomes +Z.
    np.testing.assert_allclose(extent, [0.4, 1.0, 0.2], atol=1e-6)
    assert position.min[2] == pytest.approx(0.4) and position.max[2] == pytest.approx(0.6)
    assert primitive.attributes.COLOR_0 is not None and primitive.attributes.NORMAL is not None
    assert gltf.accessors[primitive.indices].count == 12 * 3
    material = gltf.materials[primitive.material]
    assert material.pbrMetallicRoughness.metallicFactor == 0.0
    assert np.linalg.det(WORLD_TO_Y_UP) == pytest.approx(1.0)  # a rotation: winding stays outward


def glb_vertex_colors(path) -> np.ndarray:
    """COLOR_0 of a one-primitive GLB read back with pygltflib → float [V, 4] in [0, 1] (normalized ints)."""
    pygltflib = pytest.importorskip("pygltflib")
    gltf = pygltflib.GLTF2().load(str(path))
    accessor = gltf.accessors[gltf.meshes[0].primitives[0].attributes.COLOR_0]
    view = gltf.bufferViews[accessor.bufferView]
    dtype = {5121: "<u1", 5123: "<u2"}[accessor.componentType]
    assert accessor.normalized and accessor.type == "VEC4"
    start = view.byteOffset + (accessor.byteOffset or 0)
    raw = gltf.binary_blob()[start:start + accessor.count * 4 * np.dtype(dtype).itemsize]
    return np.frombuffer(raw, dtype).reshape(accessor.count, 4) / np.iinfo(dtype).max


def test_glb_colours_are_linear(tmp_path):
    """glTF's COLOR_0 is linear: sRGB 217 (a ShapesWorld red channel) is stored as ((217/255 + 0.055) / 1.055)^2.4
    = 0.6939, sRGB 10 (below the curve's linear toe) as 10/255/12.92, 255 as 1; alpha is 1."""
    mesh = _tall_box_mesh()
    colors = np.zeros((mesh.num_vertices, 3), dtype=np.uint8)
    colors[:, 0], colors[:, 1], colors[:, 2] = 217, 10, 255
    path = write_mesh(Mesh(mesh.vertices, mesh.faces, colors), tmp_path / "red.glb")
    stored = glb_vertex_colors(path)
    np.testing.assert_allclose(stored[0], [0.69387, 10 / 255 / 12.92, 1.0, 1.0], atol=2e-5)
    assert np.ptp(stored, axis=0).max() == 0.0
    floats = write_mesh(Mesh(mesh.vertices, mesh.faces, colors / 255.0), tmp_path / "float.glb")
    np.testing.assert_allclose(glb_vertex_colors(floats), stored, atol=2e-5)  # float colours: the same curve


def test_obj_and_ply_keep_colours(tmp_path):
    mesh = _tall_box_mesh()
    ply = trimesh.load(write_mesh(mesh, tmp_path / "box.ply"), process=False)
    np.testing.assert_allclose(ply.vertices, mesh.vertices, atol=1e-6)  # PLY keeps world (z-up) axes
    np.testing.assert_array_equal(ply.visual.vertex_colors[:, :3], mesh.colors)
    obj = trimesh.load(write_mesh(mesh, tmp_path / "box.obj"), process=False)
    np.testing.assert_allclose(obj.vertices, mesh.vertices @ WORLD_TO_Y_UP.T, atol=1e-6)
    assert np.abs(obj.visual.vertex_colors[:, :3].astype(int) - mesh.colors.astype(int)).max() <= 1


def test_write_mesh_errors_and_atomicity(tmp_path, monkeypatch):
    mesh = _tall_box_mesh()
    with pytest.raises(UserError, match=r"\.glb, \.obj, \.ply"):
        write_mesh(mesh, tmp_path / "x.stl")
    (tmp_path / "adir.glb").mkdir()
    with pytest.raises(UserError, match="directory"):
        write_mesh(mesh, tmp_path / "adir.glb")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        write_mesh(mesh, tmp_path / "afile" / "x.glb")
    with pytest.raises(UserError, match="empty"):
        write_mesh(Mesh(mesh.vertices, mesh.faces[:0], mesh.colors), tmp_path / "e.glb")

    existing = tmp_path / "keep.glb"
    existing.write_bytes(b"old")

    def failing_bytes(mesh, fmt):
        raise RuntimeError("boom")

    monkeypatch.setattr(export_module, "mesh_bytes", failing_bytes)
    with pytest.raises(RuntimeError):
        write_mesh(mesh, existing)
    assert existing.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["adir.glb", "afile", "keep.glb"]  # no temp files left
    monkeypatch.undo()
    write_mesh(mesh, tmp_path / "sub" / "new.glb")  # a missing parent folder is created
    assert (tmp_path / "sub" / "new.glb").stat().st_size > 0


def _gltf_validator_dir():
    """The npm package gltf-validator's folder: under $GLTF_VALIDATOR_DIR, ./node_modules or npm's global."""
    candidates = [os.environ.get("GLTF_VALIDATOR_DIR", ""), "node_modules"]
    if shutil.which("npm"):
        root = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True, timeout=30)
        candidates.append(root.stdout.strip())
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "gltf-validator", "package.json")):
            return os.path.abspath(os.path.join(folder, "gltf-validator"))
    return None


def test_glb_passes_the_khronos_validator(tmp_path):
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    package = _gltf_validator_dir()
    if package is None:
        pytest.skip("npm package gltf-validator not found (npm install -g gltf-validator)")
    path = write_mesh(remove_floaters(extract_mesh(two_spheres, 32, 1.0, "sdf")), tmp_path / "s.glb")
    script = ("const v = require(process.argv[1]); const fs = require('fs');"
              "v.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])))"
              ".then(r => console.log(JSON.stringify(r.issues)))"
              ".catch(e => { console.error(String(e)); process.exit(1); });")
    run = subprocess.run(["node", "-e", script, package, str(path)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    issues = json.loads(run.stdout)
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"]
