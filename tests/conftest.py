"""Shared test setup: deterministic, single-threaded CPU torch (CI has 2 cores; tests must stay small), and the
one tiny trained run the command tests share."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# The CLI's default thread count follows the machine's load; tests pin it so runs compare bit-for-bit.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_single_thread():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        yield
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny_cpu.yaml"
SMALL = ["render.resolution=8", "render.samples_per_ray=8", "prompts.num_val=1", "train.val_views=1"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny trained run shared by the command tests (generate / export / eval / resume cases): `asd train
    recipes/tiny_cpu.yaml --steps 1` at 8x8 renders, through the real CLI, built once per session. One
    checkpoint, step_000001, `last` → it. Treat it as read-only: a test that changes a run copies it first
    (shutil.copytree(tiny_run, tmp_path / "run", symlinks=True)); test_reliability checks commands leave it
    byte-identical."""
    from typer.testing import CliRunner

    from asdcli.cli import app

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    res = CliRunner().invoke(app, ["train", str(TINY), "--steps", "1", "--out", str(run), "--quiet", *SMALL])
    assert res.exit_code == 0, res.output
    return run
