"""A new user's first hour through the real `asd` entry point (subprocesses, output to pipes): colours that
viewers show right, commands that finish what they start, progress readable in a log, help that teaches."""

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh

from asdcli.mesh.export import srgb_to_linear
from tests.helpers.meshes import glb_vertex_colors

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny_cpu.yaml"


def asd(*args, cwd, env_extra=None, timeout=600):
    """Run `python -m asdcli ARGS` with stdout/stderr to pipes (not a terminal), as in a log or CI job."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    return subprocess.run([sys.executable, "-m", "asdcli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def test_generate_glb_colours_are_the_ply_colours_linearised(tmp_path, run40):
    """The same mesh as .ply (display sRGB, kept) and .glb (COLOR_0 linear): GLB = sRGB decode of PLY within
    one 16-bit step (the red check of a known value is tests/mesh/test_mesh.py::test_glb_colours_are_linear)."""
    for name in ("m.glb", "m.ply"):
        res = asd("generate", "a red cube", "--checkpoint", run40, "--out", tmp_path / name, "--resolution", "32",
                  "-q", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    ply = trimesh.load(tmp_path / "m.ply", process=False).visual.vertex_colors[:, :3]
    glb = glb_vertex_colors(tmp_path / "m.glb")
    assert glb.shape == (len(ply), 4) and len(ply) > 100
    np.testing.assert_allclose(glb[:, :3], srgb_to_linear(ply / 255.0), atol=1.0 / 65535 + 1e-9)
    assert np.abs(glb[:, :3] - ply / 255.0).max() > 0.05  # not the display values: they were decoded


PROMPTS_40 = [f"a {c} {s}" for c in ("red", "blue", "green", "yellow", "pink") for s in
              ("cube", "sphere", "cone", "torus", "capsule", "pyramid", "cylinder", "cube next to a red cone")]


@pytest.fixture(scope="module")
def run40(tmp_path_factory):
    """A 1-step tiny run over 40 prompts, trained through the CLI (more prompts than eval's default sample, so
    not the shared 4-prompt `tiny_run`)."""
    root = tmp_path_factory.mktemp("tiny40")
    items = "[" + ", ".join(f'"{p}"' for p in PROMPTS_40) + "]"
    res = asd("train", TINY, "--steps", "1", "--out", root / "run", f"prompts.items={items}", "-q", cwd=root)
    assert res.returncode == 0, res.stderr
    return root / "run"


def test_distill_writes_the_mesh_in_a_run_named_after_the_prompt(tmp_path):
    res = asd("distill", "a blue torus", "--recipe", TINY, "--steps", "3", "--out", tmp_path / "torus.obj",
              "--resolution", "32", cwd=tmp_path, env_extra={"ASD_PROGRESS_EVERY": "0"})
    assert res.returncode == 0, res.stderr
    run = tmp_path / "runs" / "a_blue_torus"
    assert (run / "checkpoints" / "last").exists() and (tmp_path / "torus.obj").stat().st_size > 0
    assert trimesh.load(tmp_path / "torus.obj", process=False).faces.shape[0] > 0
    out = res.stdout.splitlines()
    assert out[-2].startswith(f"wrote {tmp_path / 'torus.obj'} (") and out[-2].endswith("run: runs/a_blue_torus")
    assert out[-1].startswith("next: asd eval --checkpoint runs/a_blue_torus")
    # Output to a pipe: one plain progress line per step here (ASD_PROGRESS_EVERY=0), no bar redraws.
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("train: step ")]
    assert [ln.split()[2] for ln in lines] == ["1/3", "2/3", "3/3"], res.stderr
    assert all(" · ETA " in ln and " · loss " in ln and "steps/s" in ln for ln in lines)
    assert "\r" not in res.stderr and "\x1b[" not in res.stderr


def test_distill_out_must_be_a_mesh_and_run_dir_is_honoured(tmp_path):
    res = asd("distill", "a red cube", "--out", tmp_path / "rundir", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--run-dir" in res.stderr
    assert not (tmp_path / "runs").exists()
    res = asd("distill", "a red cube", "--recipe", TINY, "--steps", "1", "--run-dir", tmp_path / "mine",
              "--resolution", "16", "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "mine" / "a_red_cube.glb").stat().st_size > 0 and not (tmp_path / "runs").exists()
    assert res.stdout.startswith("wrote ") and res.stdout.count("\n") == 1 and res.stderr == ""


def test_eval_scores_a_seeded_sample_by_default_and_all_on_request(tmp_path, run40):
    common = ("eval", "--checkpoint", run40, "--views", "1", "--resolution", "16")
    res = asd(*common, "--json", tmp_path / "a.json", "--sheet", tmp_path / "s.png", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == ("scoring 32 of the run's 40 prompts (seeded sample; --prompts all "
                                          "scores every one)")
    rows = json.loads((tmp_path / "a.json").read_text())["prompts"]
    assert len(rows) == 32 and len({r["prompt"] for r in rows}) == 32
    again = asd(*common, "--json", tmp_path / "b.json", "-q", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == ""
    same = json.loads((tmp_path / "b.json").read_text())["prompts"]
    assert [r["prompt"] for r in same] == [r["prompt"] for r in rows]  # seeded: the same sample every time
    sheet = iio.imread(tmp_path / "s.png")
    assert sheet.shape[1] >= 128 and sheet.shape[0] >= 16 * (128 + 16)  # 16 labelled rows of views >= 128 px
    res = asd(*common, "--prompts", "all", "--json", tmp_path / "c.json", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("scoring all 40 prompts of the run")
    assert len(json.loads((tmp_path / "c.json").read_text())["prompts"]) == 40


@pytest.mark.parametrize("command, argument", [("train", "RECIPE"), ("distill", "PROMPT"), ("generate", "PROMPT"),
                                               ("export", "RUN"), ("eval", None)])
def test_help_teaches(command, argument, tmp_path):
    res = asd(command, "--help", cwd=tmp_path, env_extra={"COLUMNS": "200"})
    assert res.returncode == 0
    text = res.stdout
    assert "<bool>" not in text and "{" not in text  # flags as flags; arguments without braces
    usage = next(ln for ln in text.splitlines() if "Usage:" in ln)
    assert argument is None or f" {argument}" in usage
    examples = text.split("Examples")[-1]
    assert "Examples" in text and 2 <= sum(ln.strip().startswith(f"asd {command}") for ln in
                                           examples.splitlines()) <= 3


def test_unknown_words_warn_in_one_line_and_bundled_names_work(tmp_path):
    (tmp_path / "p.txt").write_text("a purple dodecahedron\n")
    res = asd("export", "bundled:shapes-generator", "--prompts", tmp_path / "p.txt", "--out", tmp_path / "out",
              "--resolution", "16", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "out" / "index.json").read_text()) == {
        "a_purple_dodecahedron.glb": "a purple dodecahedron"}
    warning = [ln for ln in res.stderr.splitlines() if "warning" in ln.lower()]
    assert warning == ["warning: words outside the model's vocabulary: dodecahedron (in 'a purple dodecahedron')"]
    assert ".py" not in res.stderr and "UserWarning" not in res.stderr and "Loading weights" not in res.stderr
    res = asd("eval", "--checkpoint", "bundled:shapes-prior", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "bundled:shapes-generator" in res.stderr


def test_mp4_without_the_encoder_is_exit_2_naming_the_extra(tmp_path):
    res = asd("generate", "a red cube", "--out", tmp_path / "c.glb", "--turntable", tmp_path / "c.mp4",
              cwd=tmp_path, env_extra={"IMAGEIO_FFMPEG_EXE": "/nonexistent/ffmpeg"})
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "pip install 'asdcli[video]'" in res.stderr
    assert os.listdir(tmp_path) == []  # checked before the model loads: nothing written, no .gif instead
    res = asd("generate", "a red cube", "--out", tmp_path / "c.glb", "--turntable", tmp_path / "c.gif",
              "--frames", "7", cwd=tmp_path)
    assert res.returncode == 2 and "--frames: must be between 8 and 360, got 7" in res.stderr


@pytest.mark.slow  # 48 + 4 renders at 256 px: minutes on a 2-core CPU
def test_turntable_and_views_defaults(tmp_path, run40):
    res = asd("generate", "a red cube", "--checkpoint", run40, "--out", tmp_path / "c.glb", "--resolution", "16",
              "--turntable", tmp_path / "c.gif", "--views-png", tmp_path / "v.png", "--views", "4", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    frames = iio.imread(tmp_path / "c.gif", index=None)
    assert frames.shape[:3] == (48, 256, 256)  # 7.5 degrees a frame
    sheet = iio.imread(tmp_path / "v.png")
    assert sheet.shape[1] >= 4 * 256 and sheet.shape[0] >= 16 + 256  # 4 views of 256 px under the prompt


def test_eta_skips_the_warm_up_step():
    """A 60 s first step (imports, caches) then 2 s steps: the ETA after step 2 is 2 s per remaining step, not
    the 31 s average; it then follows a slowdown gradually (EMA, alpha 0.2)."""
    from asdcli.progress import RateEstimator, format_duration

    est = RateEstimator(alpha=0.2)
    est.update(0, 0.0)
    est.update(1, 60.0)
    assert est.eta(299) is None  # only the warm-up step so far
    est.update(2, 62.0)
    assert est.eta(298) == pytest.approx(596.0, abs=1e-9) and est.rate == pytest.approx(0.5)
    est.update(3, 66.0)  # one 4 s step: 2 + 0.2 * (4 - 2) = 2.4 s per step
    assert est.eta(297) == pytest.approx(297 * 2.4, abs=1e-9)
    assert [format_duration(s) for s in (12, 338, 3725, None)] == ["12s", "5m38s", "1h02m", "?"]
