"""Reading meshes back the way a viewer does."""

import numpy as np
import pytest


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
