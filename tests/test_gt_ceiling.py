"""bench/probes/gt_ceiling.py: the ground-truth fit trains the recipe's generator towards the prompt's ground-truth
renders (its coverage error falls), and writes an ordinary run that `asd eval` scores."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["prior={kind: tiny-random, seed: 0, max_length: 24}", "generator.text_dim=32", "render.resolution=16",
        "render.samples_per_ray=16", "render.prompts_per_step=1", "prompts.library=null",
        "prompts.items=[a red cube on top of a blue sphere]", "prompts.num_val=1", "train.val_views=1",
        "train.lr=0.01", "train.log_every=1", "train.checkpoint_every=1000", "loss.weights.sparsity=0"]


@pytest.fixture(scope="module")
def gt_ceiling(load_bench):
    return load_bench("probes/gt_ceiling")


def test_fit_lowers_the_coverage_error_and_the_run_is_scored(gt_ceiling, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["gt_ceiling.py", "fit", str(ROOT / "recipes" / "shapes_asd.yaml"), "--out",
                                      str(run), "--steps", "40", *TINY])
    gt_ceiling.main()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(r["skipped"] == 0 for r in rows)
    first = sum(r["gt_mask"] for r in rows[:5]) / 5
    last = sum(r["gt_mask"] for r in rows[-5:]) / 5
    assert last < 0.7 * first, (first, last)  # the bias sphere (r 0.5) is far from the pair's silhouette

    from typer.testing import CliRunner

    from asdcli.cli import app

    prompts, out = tmp_path / "prompts.txt", tmp_path / "eval.json"
    prompts.write_text("a red cube on top of a blue sphere\n")
    res = CliRunner().invoke(app, ["eval", "--checkpoint", str(run), "--prompts", str(prompts), "--json", str(out),
                                   "-q", "--views", "1", "--resolution", "16"])
    assert res.exit_code == 0, res.output
    summary = json.loads(out.read_text())["summary"]
    assert summary["n_prompts"] == 1 and 0.0 <= summary["iou"] <= 1.0


def test_level_sweep_of_the_ground_truth_peaks_at_its_own_surface(gt_ceiling):
    prompts = ["a red cube on top of a blue sphere", "a green cone next to a yellow torus", "a pink cylinder"]
    rows = {r["level"]: r for r in gt_ceiling.level_sweep("gt", prompts, levels=(-0.05, 0.0, 0.05), res=32)}
    assert rows[0.0]["iou"] == pytest.approx(1.0) and rows[0.0]["shape_r@1"] == 1.0
    assert rows[0.0]["volume_ratio"] == pytest.approx(1.0)
    assert rows[-0.05]["volume_ratio"] < 1.0 < rows[0.05]["volume_ratio"]  # a level offsets the whole surface
    assert max(rows[-0.05]["iou"], rows[0.05]["iou"]) < 0.9
