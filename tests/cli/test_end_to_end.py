"""The whole path a user takes, through the real CLI: train → generate → export → eval."""

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

from asdcli.cli import app

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny_cpu.yaml"
runner = CliRunner()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The `asd train` under test (10 steps at the recipe's own size), so not the shared `tiny_run`."""
    run = tmp_path_factory.mktemp("e2e") / "run"
    res = runner.invoke(app, ["train", str(TINY), "--steps", "10", "--out", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    return run


def test_train_writes_a_self_describing_run(trained_run):
    from asdcli.recipe import load_dumped, load_recipe

    assert (trained_run / "checkpoints" / "last" / "generator.safetensors").exists()
    assert (trained_run / "checkpoints" / "step_000010" / "state.json").exists()
    meta = json.loads((trained_run / "meta.json").read_text())
    assert meta["step"] == 10 and meta["seed"] == 0 and len(meta["prompt_library_hash"]) == 16
    saved = load_dumped((trained_run / "recipe.yaml").read_text())
    assert saved == load_recipe(TINY, [], {"train.steps": 10, "output.dir": str(trained_run)})
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 9 and {"loss", "grad_norm", "t", "t_plus"} <= set(rows[-1])
    assert sorted(p.suffix for p in (trained_run / "val" / "step_000010").iterdir())[:1] in ([".gif"], [".mp4"])


def test_existing_run_is_not_overwritten(trained_run):
    before = (trained_run / "recipe.yaml").read_text()
    res = runner.invoke(app, ["train", str(TINY), "--steps", "10", "--out", str(trained_run), "--quiet"])
    assert res.exit_code == 2 and "pass --resume" in res.stderr
    assert (trained_run / "recipe.yaml").read_text() == before


def test_generate_glb_with_vertex_colours(trained_run, tmp_path):
    out = tmp_path / "x.glb"
    res = runner.invoke(app, ["generate", "a red cube", "--checkpoint", str(trained_run), "--out", str(out),
                              "--resolution", "32", "--verbose"])
    assert res.exit_code == 0, res.output
    assert "isosurface" in res.stdout and "total" in res.stdout
    scene = trimesh.load(out)
    (mesh,) = scene.geometry.values()
    assert len(mesh.faces) > 0
    colors = np.asarray(mesh.visual.vertex_attributes["color"])  # glTF COLOR_0 beside a PBR material
    assert colors.shape[0] == len(mesh.vertices) and colors.shape[1] in (3, 4)


def test_export_writes_one_asset_per_prompt(trained_run, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    res = runner.invoke(app, ["export", str(trained_run), "--prompts", str(prompts), "--format", "obj",
                              "--out", str(tmp_path / "out"), "--resolution", "24", "--quiet"])
    assert res.exit_code == 0, res.output
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert sorted(index.values()) == ["a blue sphere", "a red cube"]
    assert all((tmp_path / "out" / name).stat().st_size > 0 for name in index)


def test_eval_writes_json_with_summary(trained_run, tmp_path):
    from asdcli.clip_model import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    out = tmp_path / "eval.json"
    res = runner.invoke(app, ["eval", "--checkpoint", str(trained_run), "--clip-score", "--clip-model",
                              str(clip), "--json", str(out), "--views", "2", "--resolution", "16", "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["summary"]["n_prompts"] == 4
    assert 0.0 <= data["summary"]["r_at_1"] <= 1.0
    assert [row["prompt"] for row in data["prompts"]] == ["a red cube", "a blue sphere", "a green cone",
                                                         "a yellow torus"]
