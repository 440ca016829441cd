"""Write meshes as GLB, OBJ or PLY with vertex colours, atomically.

Axes. Our world is z-up with the object's front facing +x (the azimuth-0 camera sits on +x). glTF 2.0 says
+Y is up and "the front of a glTF asset faces +Z", and OBJ readers (Blender, three.js, Maya) assume the
same y-up frame. So for .glb and .obj the vertices are rotated by the proper rotation
(x, y, z)_world → (X, Y, Z) = (y, z, x): −90° about x (z-up → y-up) followed by −90° about the new y
(front +x → +Z). It is a rotation, not a mirror, so winding and normals stay outward. PLY has no axis
convention and is mostly read by z-up tools (MeshLab, Blender's default PLY import), so it keeps world axes.
Units are world units, i.e. metres in glTF; nothing is rescaled or re-centred.

GLB: one mesh, POSITION (with min/max), NORMAL, COLOR_0 (RGBA uint8, normalized) and indices, plus one
material (non-metallic, rough, white base colour) so the vertex colours show as they are; without it
viewers use glTF's default fully-metallic material, which renders vertex colours almost black.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from asdcli.errors import UserError
from asdcli.media import write_bytes_atomic
from asdcli.mesh.isosurface import Mesh

MESH_FORMATS = (".glb", ".obj", ".ply")

WORLD_TO_Y_UP = np.array([[0.0, 1.0, 0.0],
                          [0.0, 0.0, 1.0],
                          [1.0, 0.0, 0.0]], dtype=np.float32)
"""Rows map world (x, y, z) to glTF/OBJ (X, Y, Z) = (y, z, x); a rotation (determinant +1)."""

_MATERIAL = {
    "name": "vertex_colors",
    "pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0,
                             "roughnessFactor": 0.9},
}


_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


def _finish_gltf_tree(tree: dict) -> None:
    """trimesh's glTF tree post-processor: give every primitive the vertex-colour material, and tag each
    buffer view as vertex or index data (the Khronos validator hints BUFFER_VIEW_TARGET_MISSING otherwise)."""
    tree["materials"] = [_MATERIAL]
    accessors, views = tree.get("accessors", []), tree.get("bufferViews", [])
    for mesh in tree.get("meshes", []):
        for primitive in mesh["primitives"]:
            primitive["material"] = 0
            for accessor in primitive["attributes"].values():
                views[accessors[accessor]["bufferView"]]["target"] = _ARRAY_BUFFER
            if "indices" in primitive:
                views[accessors[primitive["indices"]]["bufferView"]]["target"] = _ELEMENT_ARRAY_BUFFER


def _to_trimesh(mesh: Mesh, y_up: bool):
    import trimesh

    vertices = mesh.vertices @ WORLD_TO_Y_UP.T if y_up else mesh.vertices
    colors = np.asarray(mesh.colors)
    if colors.dtype != np.uint8:  # float colours in [0, 1]
        colors = np.round(np.clip(colors, 0.0, 1.0) * 255.0).astype(np.uint8)
    rgba = np.concatenate([colors[:, :3], np.full((len(colors), 1), 255, dtype=np.uint8)], axis=1)
    return trimesh.Trimesh(vertices=vertices.astype(np.float32), faces=mesh.faces, vertex_colors=rgba,
                           process=False)


def mesh_bytes(mesh: Mesh, fmt: str) -> bytes:
    """The file contents of `mesh` in format ".glb", ".obj" or ".ply"."""
    if fmt == ".glb":
        from trimesh.exchange.gltf import export_glb

        return export_glb(_to_trimesh(mesh, y_up=True).scene(), include_normals=True,
                          tree_postprocessor=_finish_gltf_tree)
    if fmt == ".obj":
        from trimesh.exchange.obj import export_obj

        text = export_obj(_to_trimesh(mesh, y_up=True), include_normals=True, include_color=True,
                          include_texture=False, header="asd")
        return text.encode("utf-8")
    if fmt == ".ply":
        from trimesh.exchange.ply import export_ply

        return export_ply(_to_trimesh(mesh, y_up=False), encoding="binary", vertex_normal=True)
    raise UserError(f"unsupported mesh format {fmt!r}: use one of {', '.join(MESH_FORMATS)}")


def write_mesh(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Write `mesh` to `path`; the format follows the extension (.glb, .obj, .ply). Returns the path.

    Atomic: the file appears complete or not at all (an existing file is replaced only by a complete one).
    An unsupported extension, a directory at `path` or an unwritable parent is a UserError.
    """
    path = Path(path)
    fmt = path.suffix.lower()
    if fmt not in MESH_FORMATS:
        raise UserError(f"cannot write a mesh to {path}: unsupported extension {path.suffix or '(none)'!r}; "
                        f"use one of {', '.join(MESH_FORMATS)}")
    if mesh.num_faces == 0:
        raise UserError(f"cannot write {path}: the mesh is empty (no faces)")
    if path.is_dir():
        raise UserError(f"{path} is a directory: give a file name, e.g. {path / ('mesh' + fmt)}")
    return write_bytes_atomic(path, mesh_bytes(mesh, fmt))
