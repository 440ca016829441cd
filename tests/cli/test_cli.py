"""The `asd` command through its real entry point: help, version, bad input → exit 2 with one line."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from asdcli.cli import app

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny_cpu.yaml"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_imports_no_torch_and_is_fast():
    code = ("import sys, time; t=time.perf_counter(); from asdcli.cli import app\n"
            "try:\n    app(['--help'], prog_name='asd')\nexcept SystemExit:\n    pass\n"
            "bad=[m for m in ('torch','diffusers','transformers') if m in sys.modules]\n"
            "print('HEAVY', bad); print('T', time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert float(out.split("T ")[-1]) < 1.0


def test_python_m_matches_console_script():
    res = subprocess.run([sys.executable, "-m", "asdcli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip().startswith("asd ")


@pytest.mark.parametrize("command", ["train", "distill", "generate", "export", "eval"])
def test_each_command_has_help(command):
    res = invoke(command, "--help")
    assert res.exit_code == 0
    assert "Usage" in res.output and "--debug" in res.output


def _bad_recipe(tmp_path, mutate):
    raw = yaml.safe_load(TINY.read_text())
    mutate(raw)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize("make, expect", [
    (lambda t: _bad_recipe(t, lambda r: r["train"].update(stpes=1)), "did you mean 'steps'"),
    (lambda t: _bad_recipe(t, lambda r: r["train"].update(steps="x")), "train.steps: expected an integer"),
    (lambda t: _bad_recipe(t, lambda r: r.pop("loss")), "loss: missing required key"),
    (lambda t: t / "missing.yaml", "recipe file not found"),
    (lambda t: t, "is a directory"),
    (lambda t: (t / "m.yaml").write_text("a: [1,\n") and t / "m.yaml", "malformed YAML"),
    (lambda t: (t / "e.yaml").write_text("") or t / "e.yaml", "the recipe is empty"),
])
def test_bad_recipes_exit_2_one_line_no_run_dir(tmp_path, make, expect):
    recipe = make(tmp_path)
    out = tmp_path / "run"
    res = invoke("train", recipe, "--out", out)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in res.output
    assert not out.exists()


def test_bad_override_and_flag(tmp_path):
    res = invoke("train", TINY, "train.steps", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "expected key.path=value" in res.stderr
    res = invoke("train", TINY, "--steps", "0", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "--steps: must be >= 1" in res.stderr
    res = invoke("train", TINY, "--device", "tpu", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "train.device" in res.stderr
    assert not (tmp_path / "r").exists()


def test_debug_shows_traceback(tmp_path):
    res = invoke("train", tmp_path / "missing.yaml", "--debug")
    assert res.exit_code != 0 and res.exception is not None


def test_dry_run_json_counts_parameters(tmp_path):
    import json

    res = invoke("train", TINY, "--dry-run", "--json", "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["parameters"]["generator"] > 1000
    assert data["recipe"]["schema_version"] == 1
    assert not (tmp_path / "r").exists()


def test_asd_help_wall_time():
    env = dict(os.environ)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "asdcli", "--help"], capture_output=True, env=env, check=True)
    assert time.perf_counter() - t0 < 2.0


def test_quiet_prints_nothing_while_loading_the_bundled_prior(tmp_path):
    """-q: no progress bars at all, the weight-loading bar of transformers/diffusers included."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    res = subprocess.run([sys.executable, "-m", "asdcli", "distill", "a red cube", "--steps", "1", "-q",
                          "--run-dir", str(tmp_path / "run"), "--resolution", "16"], capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("wrote ") and res.stdout.count("\n") == 1 and res.stderr == ""  # the mesh only


def test_generate_quiet_prints_only_the_written_file(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    out = tmp_path / "cube.glb"
    res = subprocess.run([sys.executable, "-m", "asdcli", "generate", "a red cube", "--out", str(out), "-q",
                          "--resolution", "32"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "" and res.stdout.startswith("wrote ") and res.stdout.count("\n") == 1
    assert out.stat().st_size > 0
