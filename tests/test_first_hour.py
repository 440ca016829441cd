"""A new user's first hour through the real `asd` entry point (subprocesses, output to pipes): colours that
viewers show right, commands that finish what they start, progress readable in a log, help that teaches."""

import os
import subprocess
import sys

import numpy as np
import trimesh

from asdcli.mesh.export import srgb_to_linear
from tests.test_mesh import glb_vertex_colors


def asd(*args, cwd, env_extra=None, timeout=600):
    """Run `python -m asdcli ARGS` with stdout/stderr to pipes (not a terminal), as in a log or CI job."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    return subprocess.run([sys.executable, "-m", "asdcli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def test_generate_glb_colours_are_the_ply_colours_linearised(tmp_path):
    """The same mesh as .ply (display sRGB, kept) and .glb (COLOR_0 linear): GLB = sRGB decode of PLY within
    one 16-bit step; the red cube's median vertex is red in both."""
    for name in ("m.glb", "m.ply"):
        res = asd("generate", "a red cube", "--out", tmp_path / name, "--resolution", "32", "-q", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    ply = trimesh.load(tmp_path / "m.ply", process=False).visual.vertex_colors[:, :3]
    glb = glb_vertex_colors(tmp_path / "m.glb")
    assert glb.shape == (len(ply), 4)
    np.testing.assert_allclose(glb[:, :3], srgb_to_linear(ply / 255.0), atol=1.0 / 65535 + 1e-9)
    r, g, b = np.median(ply, axis=0)
    assert r > g + 60 and r > b + 60  # the display colours stayed red (not linearised) in the PLY
