"""Write meshes as GLB, OBJ or PLY with vertex colours, atomically.

Axes. Our world is z-up with the object's front facing +x (the azimuth-0 camera sits on +x). glTF 2.0 says
+Y is up and "the front of a glTF asset faces +Z", and OBJ readers (Blender, three.js, Maya) assume the
same y-up frame. So for .glb and .obj the vertices are rotated by the proper rotation
(x, y, z)_world → (X, Y, Z) = (y, z, x): −90° about x (z-up → y-up) followed by −90° about the new y
(front +x → +Z). It is a rotation, not a mirror, so winding and normals stay outward. PLY has no axis
convention and is mostly read by z-up tools (MeshLab, Blender's default PLY import), so it keeps world axes.
Units are world units, i.e. metres in glTF; nothing is rescaled or re-centred.

GLB: one mesh, POSITION (with min/max), NORMAL, COLOR_0 and indices, plus one material (non-metallic, rough,
white base colour) so the vertex colours show as they are; without it viewers use glTF's default
fully-metallic material, which renders vertex colours almost black.

Colour spaces. Our colours are display (sRGB) values, which is what OBJ and PLY readers expect, so those two
formats keep them. glTF defines COLOR_0 as *linear*: viewers apply the sRGB curve on output, so sRGB values
stored there show washed out (red as salmon). The GLB's COLOR_0 is therefore converted with the exact sRGB
decoding function (IEC 61966-2-1) and stored as RGBA unsigned short normalized: 8-bit linear would band the
dark shades (one linear step of 1/255 is 13 sRGB levels near black).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from asdcli.atomic import write_bytes_atomic
from asdcli.errors import UserError
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


def finish_gltf_tree(tree: dict) -> None:
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


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """The sRGB decoding function (IEC 61966-2-1), display value → linear light; c in [0, 1], any shape."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _srgb_unit(colors) -> np.ndarray:
    """Vertex colours [V, >=3] as uint8 or float in [0, 1] → float64 sRGB [V, 3] in [0, 1]."""
    colors = np.asarray(colors)
    if colors.dtype == np.uint8:
        return colors[:, :3] / 255.0
    return np.clip(np.nan_to_num(colors[:, :3].astype(np.float64)), 0.0, 1.0)


def to_trimesh(mesh: Mesh, y_up: bool, with_colors: bool = True):
    """`mesh` as a trimesh.Trimesh: vertices [V, 3] in glTF/OBJ axes (y_up) or world axes, colours as sRGB
    uint8 RGBA [V, 4] (display values, as OBJ and PLY store them), or none."""
    # lazy: trimesh is slow to import: only writing a mesh needs it (asd eval imports this module, writes none)
    import trimesh

    vertices = mesh.vertices @ WORLD_TO_Y_UP.T if y_up else mesh.vertices
    rgba = None
    if with_colors:
        rgb = np.round(_srgb_unit(mesh.colors) * 255.0).astype(np.uint8)
        rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, dtype=np.uint8)], axis=1)
    return trimesh.Trimesh(vertices=vertices.astype(np.float32), faces=mesh.faces, vertex_colors=rgba,
                           process=False)


def _glb_with_linear_colors(glb: bytes, colors) -> bytes:
    """Add COLOR_0 (linear RGBA, unsigned short normalized) [V, 4] to a one-primitive GLB written without it.

    GLB = 12-byte header + JSON chunk + BIN chunk; the colours are appended to the BIN chunk as a new buffer
    view (4-byte aligned, as vertex attributes must be) and both chunks are re-padded."""
    json_len = struct.unpack_from("<I", glb, 12)[0]
    tree = json.loads(glb[20:20 + json_len])
    bin_start = 20 + json_len
    bin_len = struct.unpack_from("<I", glb, bin_start)[0]
    binary = bytearray(glb[bin_start + 8:bin_start + 8 + bin_len])
    linear = np.round(srgb_to_linear(_srgb_unit(colors)) * 65535.0).astype("<u2")
    rgba = np.concatenate([linear, np.full((len(linear), 1), 65535, dtype="<u2")], axis=1)
    offset = len(binary) + (-len(binary)) % 4
    binary.extend(b"\0" * (offset - len(binary)) + rgba.tobytes())
    tree["bufferViews"].append({"buffer": 0, "byteOffset": offset, "byteLength": rgba.nbytes,
                                "target": _ARRAY_BUFFER})
    tree["accessors"].append({"bufferView": len(tree["bufferViews"]) - 1, "componentType": 5123,
                              "normalized": True, "count": len(rgba), "type": "VEC4"})
    tree["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"] = len(tree["accessors"]) - 1
    binary.extend(b"\0" * ((-len(binary)) % 4))
    tree["buffers"][0]["byteLength"] = len(binary)
    text = json.dumps(tree, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join([struct.pack("<4sII", b"glTF", 2, total), struct.pack("<I4s", len(text), b"JSON"), text,
                     struct.pack("<I4s", len(binary), b"BIN\0"), bytes(binary)])


def mesh_bytes(mesh: Mesh, fmt: str) -> bytes:
    """The file contents of `mesh` in format ".glb", ".obj" or ".ply"."""
    if fmt == ".glb":
        # lazy: trimesh: only writing a mesh needs it
        from trimesh.exchange.gltf import export_glb

        glb = export_glb(to_trimesh(mesh, y_up=True, with_colors=False).scene(), include_normals=True,
                         tree_postprocessor=finish_gltf_tree)
        return _glb_with_linear_colors(glb, mesh.colors)
    if fmt == ".obj":
        # lazy: trimesh: only writing a mesh needs it
        from trimesh.exchange.obj import export_obj

        text = export_obj(to_trimesh(mesh, y_up=True), include_normals=True, include_color=True,
                          include_texture=False, header="asd")
        return text.encode("utf-8")
    if fmt == ".ply":
        # lazy: trimesh: only writing a mesh needs it
        from trimesh.exchange.ply import export_ply

        return export_ply(to_trimesh(mesh, y_up=False), encoding="binary", vertex_normal=True)
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
