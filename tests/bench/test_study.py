"""bench/probes/study.py, the ShapesWorld method study: the grid is exactly the planned arms on the bundled
recipe; a tiny arm trains in segments, is scored and probed at every checkpoint, resumes from its committed
compact state on a fresh run folder; the compact state's rounding is measured; the report gives mean ± spread
and calls no difference inside the spread."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TINY = ["prior={kind: tiny-random, seed: 0, max_length: 24}", "generator.text_dim=32", "render.resolution=16",
        "render.samples_per_ray=12", "render.prompts_per_step=2"]
SETS = [part for s in TINY for part in ("--set", s)]


@pytest.fixture(scope="module")
def study():
    import importlib.util

    folders = [str(ROOT / "bench" / "probes"), str(ROOT / "bench")]  # study.py puts both on sys.path itself
    try:
        spec = importlib.util.spec_from_file_location("study", ROOT / "bench" / "probes" / "study.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["study"] = module  # dataclasses resolve their annotations through sys.modules
        spec.loader.exec_module(module)
        yield module
    finally:
        for name in ("study", "study_state", "study_score", "study_report", "study_measure", "asd_direction"):
            sys.modules.pop(name, None)
        sys.path[:] = [p for p in sys.path if p not in folders]


def test_grid_is_the_planned_arms_on_the_bundled_recipe(study, tmp_path):
    from dataclasses import fields

    from asdcli.config import to_plain
    from asdcli.losses.base import ScoreDistillationConfig
    from asdcli.losses.vsd import VSDConfig
    from asdcli.recipe import load_recipe
    from asdcli.shapes.world.library import build_library

    assert len(build_library(0)["train"]) == study.FULL_CORPUS == 6118  # the corpus "6118" is the whole split
    grid = study.build_grid()
    names = [a.name for a in grid]
    expected = {f"{m}-{n}-s{s}" for m in ("asd", "sds", "csd", "vsd") for n in (64, 1024, 6118) for s in (0, 1)}
    expected |= {f"{v}-6118-s{s}" for v in ("sds-cfg100", "asd-eta0", "asd-eta0.2") for s in (0, 1)}
    assert len(names) == 30 and set(names) == expected
    base = to_plain(load_recipe(study.RECIPE))
    vsd_only = {f.name for f in fields(VSDConfig)} - {f.name for f in fields(ScoreDistillationConfig)}
    for arm in grid:
        cfg = to_plain(study.arm_config(arm, 4000, tmp_path / arm.name))
        assert cfg["seed"] == arm.seed and cfg["prompts"]["library"] == f"shapesworld:{arm.corpus}"
        for section in ("prior", "generator"):  # the bundled recipe's, untouched
            assert cfg[section] == base[section]
        # the render too, but at the 8 prompts a step the grid started with (the recipe has 16 since)
        assert cfg["render"] == {**base["render"], "prompts_per_step": 8} and base["render"]["prompts_per_step"] == 16
        assert {k: v for k, v in cfg["train"].items() if k not in ("steps", "val_every", "device")} == \
            {k: v for k, v in base["train"].items() if k not in ("steps", "val_every", "device")}
        changed = {k for k in set(cfg["loss"]) | set(base["loss"]) if cfg["loss"].get(k) != base["loss"].get(k)}
        own = {"asd": set(), "vsd": {"kind"} | vsd_only}.get(arm.method, {"kind"})
        if arm.method != "asd":  # SDS, CSD and VSD have no shift_ratio / shift_random
            own |= {"shift_ratio", "shift_random"}
        own |= {"cfg100": {"guidance_scale"}, "eta0": {"shift_ratio"}, "eta0.2": {"shift_ratio"}}.get(arm.variant,
                                                                                                     set())
        assert changed == own, arm.name
    vsd = to_plain(study.arm_config(study.Arm("vsd", 64, 0), 10, tmp_path / "v"))["loss"]
    from asdcli.recipe import load_raw

    assert {k: vsd[k] for k in vsd_only & set(load_raw(ROOT / "recipes" / "shapes_vsd.yaml")["loss"])} == \
        {"lora_rank": 4, "lora_alpha": 4.0, "lora_lr": 0.0001, "lora_train_t": [0.0, 1.0], "camera_condition": True}
    sds = to_plain(study.arm_config(study.Arm("sds", 64, 0), 10, tmp_path / "s"))["loss"]
    assert sds["guidance_scale"] == base["loss"]["guidance_scale"]  # the recipe's 7.5 → 1.5 schedule
    high = to_plain(study.arm_config(study.Arm("sds", 6118, 0, "cfg100"), 10, tmp_path / "h"))["loss"]
    assert high["guidance_scale"] == 100.0


def test_plan_lists_every_arm_and_the_cpu_time_left(study, tmp_path, capsys):
    assert study.main(["plan", "--state", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "30 arms × 4000 steps" in out and "vsd-6118-s1" in out and "to do" in out
    per_step = sum(study.MEASURED_S_PER_STEP[a.method] for a in study.build_grid())
    fallback = study.parse(["plan"]).score_seconds
    train, score = per_step * 4000 / 3600, 30 * 8 * fallback / 3600
    assert f"left: {train + score:.1f} CPU hours ({train:.1f} training, {score:.1f} scoring at {fallback:.0f} s" in out
    assert study.main(["run", "--only", "nope"]) == 2
    assert study.main(["run", "--only", "asd-64-s0", "--state", str(tmp_path), "--set",  # no segments then
                       "loss.t_min={linear: {from: 0.5, to: 0.02, start: 0, end: 1, unit: fraction}}"]) == 2
    assert "loss.t_min: a schedule in fractions" in capsys.readouterr().err and not any(tmp_path.iterdir())
    # once an arm has scored checkpoints, the plan prices the rest at their mean (scores + mechanism probe)
    priced = tmp_path / "priced"
    rows = [{"step": 500, "seconds": 40.0, "mechanism_seconds": 10.0}, {"step": 1000, "seconds": 60.0}]
    (priced / "asd-64-s0").mkdir(parents=True)
    (priced / "asd-64-s0" / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert study.main(["plan", "--state", str(priced)]) == 0
    assert f"{30 * 8 * 55 / 3600:.1f} scoring at 55 s a checkpoint" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_arm(study, tmp_path_factory):
    from asdcli.clip_model import save_tiny_clip

    tmp = tmp_path_factory.mktemp("study")
    clip = save_tiny_clip(tmp / "clip", seed=0)
    args = ["--only", "asd-64-s0", "--score-every", "1", "--state", str(tmp / "state"), "--runs",
            str(tmp / "runs"), "--train-sample", "2", "--test-sample", "2", "--views", "1", "--resolution", "16",
            "--clip", str(clip), "--mechanism-prompts", "1", "--quiet", *SETS]
    assert study.main(["run", "--steps", "4", *args]) == 0
    return tmp, args, study.train_sample(2)


def test_a_tiny_arm_is_scored_and_probed_at_every_checkpoint(tiny_arm):
    tmp = tiny_arm[0]
    store = tmp / "state" / "asd-64-s0"
    curve = [json.loads(x) for x in (store / "curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [1, 2, 3, 4]
    for row in curve:
        for split in ("train", "test"):
            assert row[split]["n_prompts"] == 2
            assert {"shape_r@1", "iou", "iou_blob_baseline", "color_error", "collapsed", "diversity",
                    "gt_diversity"} <= set(row[split])
            assert 0.0 <= row[split]["collapsed"] <= 1.0 and 0.0 <= row[split]["gt_diversity"] <= 1.0
        assert "r_at_1" in row["test"] and "r_at_1" not in row["train"]  # CLIP renders: held-out prompts only
    from asdcli.commands import eval_command

    prompts = tmp / "train.txt"  # the train columns are `asd eval`'s own, without its renders
    prompts.write_text("\n".join(tiny_arm[2]) + "\n")
    eval_command(checkpoint=tmp / "runs" / "asd-64-s0" / "run" / "checkpoints" / "step_000004", prompts=prompts,
                 split="test", clip_score=False, clip_model=None, views=1, resolution=16, json_path=tmp / "e.json",
                 csv_path=None, sheet=None, device="cpu", quiet=True)
    summary = json.loads((tmp / "e.json").read_text())["summary"]
    for key in ("shape_r@1", "iou", "iou_blob_baseline", "color_error"):
        assert curve[-1]["train"][key] == pytest.approx(summary[key], abs=1e-6)
    mech = [json.loads(x) for x in (store / "mechanism.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in mech}) == [1, 2, 3, 4] and len(mech) == 16
    for r in mech:  # ASD's direction is guidance + asynchronous term: the triangle inequality, per image
        assert r["asd"] <= r["guidance"] + r["async"] + 1e-4 and abs(r["pcos_asd_csd"]) <= 1.0 + 1e-5
    assert sorted(p.name for p in (store / "weights").iterdir()) == [f"step_00000{i}.safetensors" for i in
                                                                      range(1, 5)]
    state = store / "state"
    assert json.loads((state / "state.json").read_text())["step"] == 4
    gen = load_file(str(state / "generator.safetensors"))
    opt = load_file(str(state / "optimizer.safetensors"))
    assert {v.dtype for v in gen.values()} == {torch.float16}
    assert {v.dtype for v in opt.values() if v.numel() > 1} == {torch.bfloat16}
    assert {v.dtype for v in opt.values() if v.numel() == 1} == {torch.float32}  # Adam's step counters


def test_a_tiny_arm_resumes_from_its_committed_state(study, tiny_arm):
    tmp, args, _ = tiny_arm
    shutil.rmtree(tmp / "runs")  # a fresh checkout: only bench/study/ARM survives
    store = tmp / "state" / "asd-64-s0"
    compact = load_file(str(store / "state" / "generator.safetensors"))
    recipe = store / "state" / "recipe.yaml"  # as a GPU session leaves it: the CPU sitting continues the arm
    recipe.write_text(recipe.read_text().replace("device: cpu", "device: cuda"))
    assert study.main(["run", "--steps", "5", *args]) == 0
    run = tmp / "runs" / "asd-64-s0" / "run"
    restored = load_file(str(run / "checkpoints" / "step_000004" / "generator.safetensors"))
    assert all(restored[k].dtype == torch.float32 and torch.equal(restored[k], compact[k].float()) for k in compact)
    assert [json.loads(x)["step"] for x in (store / "curve.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert json.loads((store / "state" / "state.json").read_text())["step"] == 5
    compact_5 = load_file(str(store / "weights" / "step_000005.safetensors"))
    from asd_direction import arm_checkpoints

    from asdcli.engine.inference import load_model

    snaps = arm_checkpoints(store, tmp / "snapshots")  # the committed weight snapshots, loadable by the engine
    assert [p.name for p in snaps] == [f"step_00000{i}" for i in range(1, 6)]
    model = load_model(snaps[-1])
    assert all(torch.equal(v, compact_5[k].float()) for k, v in model.generator.state_dict().items())
    bad = [a if a != "2" else "3" for a in args]  # another train sample: the arm refuses to mix settings
    assert study.main(["run", "--steps", "5", *bad]) == 2
    out = tmp / "report"
    assert study.main(["report", "--state", str(tmp / "state"), "--out", str(out)]) == 0
    md = (out / "study.md").read_text()
    assert "| asd-64 | 64 | 5 | 1 |" in md and "(1 seed)" in md and "**no call (missing)**" in md
    assert (out / "curves_test_shape_r1.png").stat().st_size > 0
    assert (out / "curves_mechanism_ratio.png").stat().st_size > 0


def test_compact_state_drift_fp32_exact_bf16_moments_close_fp16_moments_not(study, tmp_path):
    import study_state

    from asdcli.prompts import read_library

    arm = study.Arm("asd", 64, 0)

    def cfg_at(steps, run):
        return study.arm_config(arm, steps, run, extra=[*TINY, "train.checkpoint_every=2"])

    out = study_state.drift(cfg_at, read_library("shapesworld:64")["train"], 2, 2, tmp_path)
    v = out["variants"]
    assert v["fp32/fp32"]["rel_to_update"] == 0.0 and v["fp32/fp32"]["max_loss_diff"] == 0.0
    assert v["fp16/bf16"]["rel_to_weights"] < 2e-3  # fp16 weights round at ~5e-4 of each value
    # fp16 flushes Adam's smallest second moments to zero: the resumed steps jump (m / eps)
    assert v["fp16/fp16"]["rel_to_update"] > 10 * v["fp16/bf16"]["rel_to_update"]
    assert v["fp16/bf16"]["bytes"] < 0.6 * out["checkpoint_bytes"]


def _curve(step: int, train_r: float, test_r: float, colour: float) -> str:
    split = {"shape_r@1": test_r, "iou": 0.5, "iou_blob_baseline": 0.3, "color_error": colour, "r_at_1": 0.1,
             "collapsed": 0.0, "diversity": 0.6}
    return json.dumps({"step": step, "train": {**split, "shape_r@1": train_r}, "test": split}) + "\n"


def test_report_gives_mean_and_spread_and_calls_only_outside_it(study, tmp_path):
    import study_report

    values = {"asd-64-s0": (0.50, 0.20, 0.10), "asd-64-s1": (0.40, 0.30, 0.12),
              "sds-64-s0": (0.30, 0.25, 0.20), "sds-64-s1": (0.20, 0.35, 0.22), "csd-64-s0": (0.1, 0.1, 0.1)}
    for name, (train_r, test_r, colour) in values.items():
        (tmp_path / name).mkdir()
        stale = _curve(1000, 0.9, 0.9, 0.9) if name == "asd-64-s0" else ""  # scored twice: the last row counts
        (tmp_path / name / "curve.jsonl").write_text(_curve(500, 0.0, 0.0, 0.3) + stale +
                                                     _curve(1000, train_r, test_r, colour))
    assert study.main(["report", "--state", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "study.md").read_text()
    assert "| asd-64 | 64 | 1000 | 2 | 0.450 ± 0.050 | 0.250 ± 0.050 |" in md
    assert "asd vs sds on train shape_r@1: **better**" in md  # ranges [0.4, 0.5] and [0.2, 0.3]
    assert "asd vs sds on test shape_r@1: **no call (inside the spread)**" in md  # [0.2, 0.3] and [0.25, 0.35]
    assert "asd vs sds on test colour err: **better**" in md  # lower is better: [0.10, 0.12] vs [0.20, 0.22]
    assert "asd vs csd on train shape_r@1: **no call (one seed)**" in md
    a, b = study_report.stats([0.4, 0.5]), study_report.stats([0.35, 0.45])
    assert study_report.call(a, b) == "no call (inside the spread)"
    assert study_report.call(a, study_report.stats([0.1, 0.39])) == "better"
    assert study_report.call(study_report.stats([0.1, 0.39]), a) == "worse"
