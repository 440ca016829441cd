"""bench/study.py, the ShapesWorld method study: a 2-arm, 2-step smoke run on a tiny random prior writes results,
tables and plots, is resumable, and the baseline recipes differ from shapes_asd.yaml only in the loss kind."""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["prior={kind: tiny-random, seed: 0, max_length: 24}", "generator.text_dim=32", "render.resolution=16",
        "render.samples_per_ray=12", "render.prompts_per_step=1", "prompts.num_val=1", "train.val_views=1"]


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(ROOT / "bench"))  # the bench scripts import their `common` helper
    try:
        spec = importlib.util.spec_from_file_location("study", ROOT / "bench" / "study.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["study"] = module  # dataclasses resolve their annotations through sys.modules
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("study", None)
        sys.path.remove(str(ROOT / "bench"))


@pytest.mark.parametrize("method", ["sds", "csd", "vsd"])
def test_baseline_recipes_change_only_the_loss(method):
    from asdcli.recipe import load_recipe

    asd = load_recipe(ROOT / "recipes" / "shapes_asd.yaml")
    other = load_recipe(ROOT / "recipes" / f"shapes_{method}.yaml")
    assert other.loss.kind == method and other.name == f"shapes_{method}"
    assert {f.name for f in dataclasses.fields(asd) if getattr(asd, f.name) != getattr(other, f.name)} == \
        {"name", "loss"}
    shared = [f.name for f in dataclasses.fields(type(asd.loss)) if hasattr(other.loss, f.name) and f.name != "kind"]
    assert shared and all(getattr(asd.loss, k) == getattr(other.loss, k) for k in shared)


def test_grid_and_dry_run(study, tmp_path, capsys):
    assert [a.name for a in study.build_grid(False, False)] == ["asd-16", "asd-256", "sds-16", "sds-256"]
    full = study.build_grid(True, True)
    assert len(full) == 15 and len({a.name for a in full}) == 15  # asd-256 is the ablation's random η = 0.1
    ablation = {a.name: a.overrides for a in full if a.group == "ablation"}
    assert ablation == {"asd-eta0-256": ("loss.shift_ratio=0",), "asd-fixed0.1-256": ("loss.shift_random=false",),
                        "asd-rand0.2-256": ("loss.shift_ratio=0.2",)}
    assert study.main(["--dry-run", "--full", "--ablation", "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "15 arms × 3000 steps" in out and "vsd-4096" in out and "to do" in out
    assert study.main(["--only", "nope", "--runs", str(tmp_path)]) == 2


def test_two_arm_smoke_run_is_scored_and_resumable(study, tmp_path, monkeypatch):
    from asdcli.clip_model import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip", seed=0)
    args = ["--steps", "2", "--only", "asd-16", "sds-16", "--runs", str(tmp_path / "runs"), "--out",
            str(tmp_path / "out"), "--train-sample", "2", "--test-sample", "2", "--views", "1", "--resolution",
            "16", "--clip", str(clip), "--quiet", *[part for s in TINY for part in ("--set", s)]]
    assert study.main(args) == 0
    data = json.loads((tmp_path / "out" / "study.json").read_text())
    arms = {a["arm"]: a for a in data["arms"]}
    assert set(arms) == {"asd-16", "sds-16"} and data["settings"]["steps"] == 2
    for arm in arms.values():
        assert arm["steps_done"] == 2 and arm["nonfinite_total"] == 0 and arm["diverged"] is None
        for split in ("train", "test"):
            assert arm[split]["n_prompts"] == 2
            assert {"shape_r@1", "iou", "iou_blob_baseline", "color_error", "r_at_1"} <= set(arm[split])
        assert {"empty_frac", "full_frac", "pairwise_iou", "collapsed"} <= set(arm["collapse"])
    run = tmp_path / "runs" / "steps2-seed0" / "sds-16" / "run"
    assert json.loads((run / "meta.json").read_text())["step"] == 2
    assert "kind: sds" in (run / "recipe.yaml").read_text()
    table = (tmp_path / "out" / "study.md").read_text()
    assert "| asd-16 |" in table and "| sds-16 |" in table
    assert (tmp_path / "out" / "study_test_shape_r1.png").stat().st_size > 0
    # Resumable: arms with a result are not trained or scored again.
    monkeypatch.setattr(study, "train_arm", lambda *a: pytest.fail("a finished arm was retrained"))
    assert study.main(args) == 0
