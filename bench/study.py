"""The ShapesWorld method study: ASD vs SDS vs CSD vs VSD at equal steps over nested corpora, scored against ground
truth on train prompts and on held-out test prompts (DESIGN §8, the paper's corpus-scaling claim).

    python bench/study.py [--full] [--ablation] [--steps N] [--threads T] [--jobs J] [--dry-run] [--only ARM ...]
                          [--set KEY=VALUE ...] [--seed S] [--runs DIR] [--out DIR] [--clip MODEL|none]

Arms. Reduced grid (default): ASD, SDS × shapesworld:16, :256 at 1000 steps. `--full`: ASD, SDS, CSD, VSD ×
:16, :256, :4096 at 3000 steps. `--ablation` adds the Δt ablation on :256 with ASD:
η = 0 (t⁺ = t), fixed η·(t − t_min) with η = 0.1 (`shift_random: false`), random η = 0.1 (the grid's asd-256),
random η = 0.2. Every arm is recipes/shapes_{method}.yaml (identical but for the loss) with the same generator,
steps, seed and overrides (`--set`), trained with the engine behind `asd train` (`asdcli.engine.trainer.fit`).

Scores, by `asd eval`'s own command body (`asdcli.commands.eval_command`): shape_r@1, iou next to
iou_blob_baseline, color_error and CLIP R@1 (bundled CLIP) on a seeded sample of up to --train-sample train
prompts of the arm's corpus and --test-sample test-split prompts (the same for every arm; R@1 and shape_r@1
retrieve within the evaluated set, so train figures of :16 retrieve among 16, not 64). Reliability: non-finite
steps (`nonfinite_total` of metrics.jsonl; an aborted run counts as diverged and is scored at its last finite
checkpoint) and collapse on the test sample at 32³: occupancy empty (< 0.1 % of the box) or filling it
(> 50 %) for most prompts, or every prompt the same shape (mean best-rotation IoU between different prompts'
shapes ≥ 0.9; `gt_pairwise_iou` is the same figure for the true scenes).

Resumable: an arm whose result.json exists is skipped; a half-trained one resumes from its last checkpoint
(every 250 steps). Runs live in --runs (default bench/results/study_runs/steps{N}-seed{S}/ARM/). Outputs in --out
(default bench/results/): study.json, study.md (tables for BENCHMARKS.md) and study_{split}_{metric}.png
(metric vs corpus size, one line per method). `--jobs 2` trains two arms at a time in child processes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import common

ROOT = common.ROOT
RECIPES = ROOT / "recipes"
REDUCED = (("asd", "sds"), (16, 256), 1000)  # methods, corpus sizes, steps
FULL = (("asd", "sds", "csd", "vsd"), (16, 256, 4096), 3000)
ABLATION_CORPUS = 256
ABLATION = {"asd-eta0": ("loss.shift_ratio=0",), "asd-fixed0.1": ("loss.shift_random=false",),
            "asd": (), "asd-rand0.2": ("loss.shift_ratio=0.2",)}
METRICS = ("shape_r@1", "iou", "color_error", "r_at_1")
EMPTY_FILL, FULL_FILL, SAME_SHAPE_IOU = 1e-3, 0.5, 0.9


@dataclass(frozen=True)
class Arm:
    name: str
    method: str  # loss kind: recipes/shapes_{method}.yaml
    corpus: int  # train prompts: prompts.library=shapesworld:{corpus}
    overrides: tuple[str, ...] = ()
    group: str = "grid"  # grid | ablation

    @property
    def recipe(self) -> Path:
        return RECIPES / f"shapes_{self.method}.yaml"


def build_grid(full: bool, ablation: bool) -> list[Arm]:
    methods, corpora, _ = FULL if full else REDUCED
    arms = [Arm(f"{m}-{n}", m, n) for m in methods for n in corpora]
    if ablation:
        names = {a.name for a in arms}
        arms += [Arm(f"{k}-{ABLATION_CORPUS}", "asd", ABLATION_CORPUS, o, "ablation") for k, o in ABLATION.items()
                 if f"{k}-{ABLATION_CORPUS}" not in names]
    return arms


def sample_prompts(corpus: int | None, split: str, n: int, seed: int) -> list[str]:
    """Up to n prompts of a split (train = the nested corpus of that size), seeded, in the split's order."""
    from asdcli.shapes.library import build_library

    items = build_library(0, corpus)[split]
    if len(items) <= n:
        return list(items)
    keep = set(random.Random(f"study-{split}-{seed}").sample(range(len(items)), n))
    return [p for i, p in enumerate(items) if i in keep]


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ one arm
def train_arm(arm: Arm, run: Path, args, steps: int) -> dict[str, Any]:
    """Train (or resume) the arm's run; returns time, speed and divergence."""
    from asdcli.engine.checkpoint import step_dirs
    from asdcli.engine.trainer import TrainingAborted, fit
    from asdcli.prompts import read_library
    from asdcli.recipe import load_recipe

    overrides = [f"prompts.library=shapesworld:{arm.corpus}", "train.val_every=0", f"seed={args.seed}",
                 *args.set, *arm.overrides]
    cfg = load_recipe(arm.recipe, overrides, {"train.steps": steps, "output.dir": str(run),
                                                 "train.device": args.device})
    lib = read_library(cfg.prompts.library)
    meta = run / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("step") == steps:
        return {"train_seconds": None, "diverged": None}  # trained before an interrupted evaluation
    t0, diverged = time.time(), None
    try:
        fit(cfg, lib["train"], lib["val"], resume=bool(step_dirs(run / "checkpoints")), quiet=args.quiet)
    except TrainingAborted as exc:  # too many non-finite steps in a row: the last finite checkpoint remains
        diverged = str(exc)
    return {"train_seconds": time.time() - t0, "diverged": diverged}


def last_metrics(run: Path) -> dict[str, Any]:
    """The last record of the run's metrics.jsonl (cumulative nonfinite_total, steps_per_s), or {}."""
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    return json.loads(lines[-1]) if lines else {}


def collapse_stats(run: Path, prompts: list[str], device: str, res: int = 32) -> dict[str, Any]:
    """Occupancy fill per prompt and shape diversity on `prompts` (see the module docstring)."""
    import torch

    from asdcli.engine.inference import field_state, load_model
    from asdcli.shapes.evaluation import predicted_occupancy
    from asdcli.shapes.grammar import parse_prompt
    from asdcli.shapes.metrics import gt_occupancy, iou_matrix

    model = load_model(run, device)
    occs = []
    for start in range(0, len(prompts), 8):
        state, _ = field_state(model, prompts[start:start + 8], seed=model.cfg.seed)
        occs += [predicted_occupancy(model, state, i, res) for i in range(len(prompts[start:start + 8]))]
    fill = torch.stack([o.float().mean() for o in occs])
    off = ~torch.eye(len(occs), dtype=torch.bool)

    def pairwise(grids) -> float:
        return float(iou_matrix(grids, torch.stack(list(grids)))[off].mean()) if len(grids) > 1 else float("nan")

    stats = {"fill_mean": float(fill.mean()), "empty_frac": float((fill < EMPTY_FILL).float().mean()),
             "full_frac": float((fill > FULL_FILL).float().mean()), "pairwise_iou": pairwise(occs),
             "gt_pairwise_iou": pairwise(list(gt_occupancy([parse_prompt(p) for p in prompts], res)))}
    reasons = [name for name, hit in (("empty", stats["empty_frac"] > 0.5), ("full", stats["full_frac"] > 0.5),
                                      ("same shape", stats["pairwise_iou"] >= SAME_SHAPE_IOU)) if hit]
    return {**stats, "collapsed": bool(reasons), "reasons": reasons}


def score(run: Path, folder: Path, split: str, prompts: list[str], args) -> dict[str, Any]:
    """`asd eval` on the prompt sample (written as a .txt prompt file) → its summary."""
    from asdcli.commands import eval_command

    file = folder / f"prompts_{split}.txt"
    file.write_text("\n".join(prompts) + "\n")
    out = folder / f"eval_{split}.json"
    clip = None if args.clip == "none" else args.clip
    eval_command(checkpoint=run, prompts=file, split="test", clip_score=clip is not None, clip_model=clip,
                 views=args.views, resolution=args.resolution, json_path=out, csv_path=None,
                 sheet=folder / f"sheet_{split}.png", device=args.device, quiet=True)
    return json.loads(out.read_text())["summary"]


def run_arm(arm: Arm, root: Path, args, steps: int) -> dict[str, Any]:
    """Train, score and check one arm; the result is written to RUNS/ARM/result.json (skipped if present)."""
    folder = root / arm.name
    result_file = folder / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    run = folder / "run"
    print(f"{arm.name}: training {steps} steps ({arm.recipe.name}, shapesworld:{arm.corpus})", flush=True)
    trained = train_arm(arm, run, args, steps)
    last = last_metrics(run)
    result = {**asdict(arm), "arm": arm.name, "recipe": arm.recipe.name, "steps": steps, "seed": args.seed,
              **trained, "steps_done": last.get("step", -1) + 1, "steps_per_s": last.get("steps_per_s"),
              "nonfinite_total": int(last.get("nonfinite_total", 0)), "train": {}, "test": {},
              "collapse": {"collapsed": False, "reasons": []}}
    if (run / "meta.json").is_file():  # a run that diverged before its first checkpoint has nothing to score
        print(f"{arm.name}: scoring", flush=True)
        test_prompts = sample_prompts(None, "test", args.test_sample, args.seed)
        result.update(train=score(run, folder, "train", sample_prompts(arm.corpus, "train", args.train_sample,
                                                                       args.seed), args),
                      test=score(run, folder, "test", test_prompts, args),
                      collapse=collapse_stats(run, test_prompts, args.device))
    write_json(result_file, result)
    return result


# ------------------------------------------------------------------------------------------------ report
COLORS = {"asd": (214, 39, 40), "sds": (31, 119, 180), "csd": (44, 160, 44), "vsd": (148, 103, 189),
          "blob baseline": (150, 150, 150)}


def line_plot(path: Path, title: str, series: dict[str, list[tuple[int, float]]]) -> Path:
    """A PNG line plot (PIL only, no matplotlib): x = corpus size on a log2 axis, one line per series."""
    from PIL import Image, ImageDraw

    w, h, left, right, top, bottom = 600, 380, 60, 130, 34, 44
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and math.isfinite(y)]
    xs = sorted({x for x, _ in pts}) or [1]
    lx0, lx1 = math.log2(xs[0]) - 0.5, math.log2(xs[-1]) + 0.5
    y0 = min([0.0] + [y for _, y in pts])
    y1 = max([y for _, y in pts] + [y0 + 1e-6]) * 1.08

    def px(x: float) -> float:
        return left + (math.log2(x) - lx0) / (lx1 - lx0) * (w - left - right)

    def py(y: float) -> float:
        return h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)

    for i in range(5):  # horizontal grid with labels
        y = y0 + (y1 - y0) * i / 4
        d.line([(left, py(y)), (w - right, py(y))], fill=(225, 225, 225))
        d.text((6, py(y) - 6), f"{y:.3g}", fill="black")
    d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    for x in xs:
        d.line([(px(x), h - bottom), (px(x), h - bottom + 4)], fill="black")
        d.text((px(x) - 10, h - bottom + 6), str(x), fill="black")
    d.text((left, 10), title, fill="black")
    d.text((left + 120, h - 18), "train prompts (corpus size, log scale)", fill="black")
    for k, (name, s) in enumerate(series.items()):
        color = COLORS.get(name, (0, 0, 0))
        xy = [(px(x), py(y)) for x, y in s if y is not None and math.isfinite(y)]
        if len(xy) > 1:
            d.line(xy, fill=color, width=1 if name == "blob baseline" else 2)
        for x, y in xy:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        d.line([(w - right + 10, top + 8 + 16 * k), (w - right + 30, top + 8 + 16 * k)], fill=color, width=2)
        d.text((w - right + 36, top + 2 + 16 * k), name, fill="black")
    tmp = path.with_name(f".{path.name}.tmp.png")
    img.save(tmp)
    os.replace(tmp, path)
    return path


def plots(results: list[dict], out: Path) -> list[Path]:
    """study_{split}_{metric}.png for the grid arms: each metric's mean vs corpus size, one line per method."""
    grid, paths = [r for r in results if r["group"] == "grid"], []
    if not grid:
        return paths
    for split in ("test", "train"):
        for metric in METRICS:
            series = {m: sorted((r["corpus"], r[split].get(metric)) for r in grid if r["method"] == m)
                      for m in dict.fromkeys(r["method"] for r in grid)}
            if metric == "iou":
                series["blob baseline"] = sorted((r["corpus"], r[split].get("iou_blob_baseline")) for r in grid
                                                 if r["method"] == grid[0]["method"])
            if any(y is not None for s in series.values() for _, y in s):
                name = metric.replace("@", "")
                paths.append(line_plot(out / f"study_{split}_{name}.png", f"{metric} ({split} prompts)", series))
    return paths


def table_rows(results: list[dict]) -> list[list[Any]]:
    rows = []
    for r in results:
        tr, te, c = r["train"], r["test"], r["collapse"]
        status = "diverged" if r.get("diverged") else ("collapsed: " + ", ".join(c["reasons"]) if c["collapsed"]
                                                        else "ok")
        cells = [tr.get("shape_r@1"), te.get("shape_r@1"), te.get("iou"), te.get("iou_blob_baseline"),
                 te.get("color_error"), tr.get("r_at_1"), te.get("r_at_1")]
        rows.append([r["arm"], r["corpus"], *("–" if v is None else v for v in cells), r["nonfinite_total"], status])
    return rows


HEADER = ["arm", "corpus", "train shape_r@1", "test shape_r@1", "test IoU", "blob IoU", "test colour err",
          "train CLIP R@1", "test CLIP R@1", "non-finite", "status"]


def report(results: list[dict], out: Path, settings: dict) -> None:
    """study.json, study.md (Markdown tables) and the PNG plots in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "study.json", {"benchmark": "study", "machine": common.machine(), "settings": settings,
                                    "arms": results})
    lines = [f"Method study: {settings['steps']} steps, seed {settings['seed']}, test sample "
             f"{settings['test_sample']} prompts, {settings['views']} views at {settings['resolution']}² for CLIP.", ""]
    by_name = {r["arm"]: r for r in results}
    ablation = [by_name[f"{k}-{ABLATION_CORPUS}"] for k in ABLATION if f"{k}-{ABLATION_CORPUS}" in by_name]
    tables = [("Methods × corpus size", [r for r in results if r["group"] == "grid"])]
    if any(r["group"] == "ablation" for r in ablation):  # asd-256 is the ablation's random η = 0.1 arm
        tables.append(("Δt ablation (ASD, 256 prompts): η = 0, fixed 0.1, random 0.1 (asd-256), random 0.2",
                       ablation))
    for title, group in tables:
        tab = common.table(title, HEADER, table_rows(group))
        lines += [f"### {title}", "", "| " + " | ".join(tab["header"]) + " |",
                  "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(HEADER))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in tab["rows"]] + [""]
    (out / "study.md").write_text("\n".join(lines))
    for path in plots(results, out):
        print(f"wrote {path}")
    print(f"wrote {out / 'study.json'} and {out / 'study.md'}", flush=True)


# ------------------------------------------------------------------------------------------------ CLI
def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="ASD, SDS, CSD, VSD × 16, 256, 4096 prompts")
    ap.add_argument("--ablation", action="store_true", help="add the Δt ablation (ASD on 256 prompts)")
    ap.add_argument("--steps", type=int, default=None, help="steps per arm (default 1000, --full 3000)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per arm")
    ap.add_argument("--jobs", type=int, default=1, help="arms trained at once, in child processes")
    ap.add_argument("--dry-run", action="store_true", help="print the grid and each arm's state, run nothing")
    ap.add_argument("--only", nargs="+", default=None, metavar="ARM", help="run only these arms of the grid")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for every arm (repeatable), e.g. --set render.samples_per_ray=32")
    ap.add_argument("--seed", type=int, default=0, help="the recipe seed of every arm")
    ap.add_argument("--train-sample", type=int, default=64, help="train prompts scored per arm (at most)")
    ap.add_argument("--test-sample", type=int, default=64, help="held-out test prompts scored per arm")
    ap.add_argument("--views", type=int, default=8, help="orbit views per prompt for CLIP R@1")
    ap.add_argument("--resolution", type=int, default=64, help="orbit render side for CLIP R@1")
    ap.add_argument("--clip", default="bundled:shapes-clip", help="CLIP model for R@1, or 'none'")
    ap.add_argument("--runs", default=str(common.RESULTS / "study_runs"), help="folder of the arms' runs")
    ap.add_argument("--out", default=str(common.RESULTS), help="folder of study.json, study.md and the plots")
    ap.add_argument("--quiet", action="store_true", help="no training progress bars")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where arms train and are scored")
    ap.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)  # child processes of --jobs
    return ap.parse_args(argv)


def arm_state(arm: Arm, root: Path) -> str:
    folder = root / arm.name
    if (folder / "result.json").is_file():
        return "done"
    meta = folder / "run" / "meta.json"
    return f"resumes at step {json.loads(meta.read_text())['step']}" if meta.is_file() else "to do"


def child_command(arm: Arm, args, steps: int) -> list[str]:
    """This script for one arm, with the parent's settings (what a --jobs child runs)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", arm.name, "--no-report", "--quiet",
           "--steps", str(steps), "--threads", str(args.threads), "--seed", str(args.seed),
           "--train-sample", str(args.train_sample), "--test-sample", str(args.test_sample),
           "--views", str(args.views), "--resolution", str(args.resolution), "--clip", args.clip,
           "--runs", args.runs, "--device", args.device]
    cmd += ["--full"] * args.full + ["--ablation"] * args.ablation
    return cmd + [part for s in args.set for part in ("--set", s)]


def run_parallel(arms: list[Arm], root: Path, args, steps: int) -> list[str]:
    """Up to args.jobs child processes at a time, one per arm; each logs to RUNS/ARM/log.txt."""
    pending = [a for a in arms if not (root / a.name / "result.json").is_file()]
    running: list[tuple[Arm, subprocess.Popen]] = []
    failed = []
    while pending or running:
        while pending and len(running) < args.jobs:
            arm = pending.pop(0)
            (root / arm.name).mkdir(parents=True, exist_ok=True)
            log = open(root / arm.name / "log.txt", "a")  # noqa: SIM115 - closed with the process below
            proc = subprocess.Popen(child_command(arm, args, steps), stdout=log, stderr=subprocess.STDOUT,
                                    env=common.child_env(args.threads))  # same cwd: relative paths hold
            running.append((arm, proc))
            print(f"{arm.name}: started (pid {proc.pid})", flush=True)
        time.sleep(2)
        for arm, proc in [r for r in running if r[1].poll() is not None]:
            running.remove((arm, proc))
            print(f"{arm.name}: exit {proc.returncode}", flush=True)
            if proc.returncode:
                failed.append(arm.name)
    if failed:
        print(f"failed arms (see their log.txt): {', '.join(failed)}", file=sys.stderr)
    return failed


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    steps = args.steps or (FULL if args.full else REDUCED)[2]
    grid = build_grid(args.full, args.ablation)
    unknown = sorted(set(args.only or ()) - {a.name for a in grid})
    if unknown:
        print(f"error: --only: no arm named {', '.join(unknown)} in this grid; arms: "
              f"{', '.join(a.name for a in grid)}", file=sys.stderr)
        return 2
    arms = [a for a in grid if args.only is None or a.name in args.only]
    root = Path(args.runs) / f"steps{steps}-seed{args.seed}"
    if args.dry_run:
        common.table(f"study grid: {len(arms)} arms × {steps} steps (runs in {root})",
                     ["arm", "group", "recipe", "corpus", "overrides", "state"],
                     [[a.name, a.group, a.recipe.name, a.corpus, " ".join(a.overrides) or "–", arm_state(a, root)]
                      for a in arms])
        return 0
    import torch

    from asdcli.errors import UserError

    torch.set_num_threads(max(1, args.threads))
    failed: list[str] = []
    try:
        if args.jobs > 1:
            failed = run_parallel(arms, root, args, steps)
        else:
            for arm in arms:
                run_arm(arm, root, args, steps)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.no_report:
        results = [json.loads((root / a.name / "result.json").read_text()) for a in grid
                   if (root / a.name / "result.json").is_file()]
        settings = {k: v for k, v in vars(args).items() if k not in ("no_report", "dry_run", "only")}
        report(results, Path(args.out), {**settings, "steps": steps})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
