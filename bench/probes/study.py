"""The ShapesWorld method study: ASD vs SDS, CSD and VSD as the corpus grows, with seeds, on the bundled recipe
(docs/study/DESIGN.md holds the design; docs/notebook.md §8 the results).

    python bench/probes/study.py plan     [--steps N]                   the grid, each arm's state, the cost left
    python bench/probes/study.py run      [--only ARM ...] [--budget-min M] [--jobs J] [--device cpu|cuda] ...
    python bench/probes/study.py report   [--out docs/study]            table, curves, verdict template
    python bench/probes/study.py steptime [--methods asd ...]           s/step of the bundled recipe per loss
    python bench/probes/study.py drift    [--before 30 --after 20]      compact-state resume vs uninterrupted

Arms: {asd, sds, csd, vsd} × shapesworld:{64, 1024, 6118} × seeds {0, 1}, plus on 6118 SDS at a constant CFG
100 and ASD at η 0 and 0.2 (both seeds): 30 arms. Each is recipes/shapes_generator.yaml with `loss.kind` and the
method's own keys (those of recipes/shapes_{method}.yaml's loss section that the shared score-distillation
config lacks: VSD's LoRA options) overridden, plus the corpus and the seed; every schedule is the recipe's.

An arm trains in segments of --score-every steps (the recipe's schedules count steps, so a segmented run
replays the uninterrupted one). After each segment its checkpoint is scored (study_score.py) and probed
(asd_direction.py `mechanism_rows`), and the arm's compact state (study_state.py; all three beside this file in
bench/probes/) is written to bench/study/ARM/ with the scores, so the next sitting continues it from a fresh checkout.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

HERE = Path(__file__).resolve().parent  # bench/probes: the study's own modules; bench/: the suite's common.py
sys.path[:0] = [str(HERE), str(HERE.parent)]  # plain modules, not a package
import common  # noqa: E402
import study_state  # noqa: E402
from study_score import sample_prompts, train_sample  # noqa: E402, F401 - §9b–§9k cite study.py's sample_prompts

ROOT = common.ROOT
RECIPE = ROOT / "recipes" / "shapes_generator.yaml"
STATE = ROOT / "bench" / "study"  # committed: compact state, scores and mechanism rows per arm
RUNS = common.RESULTS / "study_runs"  # local, gitignored: full fp32 run directories
METHODS, CORPORA, SEEDS = ("asd", "sds", "csd", "vsd"), (64, 1024, 6118), (0, 1)
FULL_CORPUS = 6118  # the whole ShapesWorld train split (build_library(0)["train"])
VARIANTS = {("sds", "cfg100"): ("loss.guidance_scale=100",),  # DreamFusion's constant scale, the whole run
            ("asd", "eta0"): ("loss.shift_ratio=0",), ("asd", "eta0.2"): ("loss.shift_ratio=0.2",)}
STEPS, SCORE_EVERY = 4000, 500  # the bundled recipe left chance by ~4,000 steps at 8 prompts (docs/notebook.md §9k)
MEASURED_S_PER_STEP = {"asd": 0.72, "sds": 0.57, "csd": 0.55, "vsd": 0.92}  # CPU s, 1 thread (`steptime`, idle,
# 2026-12-07, fused triplane kernel; 1.23, 1.12, 1.12, 1.61 under load before it)


@dataclass(frozen=True)
class Arm:
    method: str
    corpus: int
    seed: int
    variant: str = ""  # "" (the recipe's loss settings) or a key of VARIANTS

    @property
    def config(self) -> str:
        """The arm without its seed: what mean and spread are taken over."""
        return f"{self.method}{'-' + self.variant if self.variant else ''}-{self.corpus}"

    @property
    def name(self) -> str:
        return f"{self.config}-s{self.seed}"

    @property
    def overrides(self) -> tuple[str, ...]:
        return VARIANTS.get((self.method, self.variant), ())


def build_grid() -> list[Arm]:
    """Seed 0 of every arm first, then seed 1: a budget that runs out leaves one seed of everything."""
    return [arm for s in SEEDS for arm in [Arm(m, n, s) for m in METHODS for n in CORPORA]
            + [Arm(m, FULL_CORPUS, s, v) for (m, v) in VARIANTS]]


def method_keys(method: str) -> tuple[str, ...]:
    """Overrides for the method's own loss keys: those of recipes/shapes_{method}.yaml's loss section that the
    shared score-distillation config lacks (VSD's LoRA options; none for SDS, CSD, and ASD keeps its defaults)."""
    from asdcli.losses.base import ScoreDistillationConfig
    from asdcli.recipe import load_raw

    shared = {f.name for f in fields(ScoreDistillationConfig)}
    loss = load_raw(ROOT / "recipes" / f"shapes_{method}.yaml")["loss"]
    return tuple(f"loss.{k}={json.dumps(v)}" for k, v in loss.items() if k not in shared)


# The study started at the recipe's 8 prompts a step; the recipe moved to 16 after (docs/notebook.md §9l), which
# would double every arm's cost (docs/study/DESIGN.md), so the grid keeps 8.
STUDY_PROMPTS_PER_STEP = 8


def arm_overrides(arm: Arm, extra: list[str] = ()) -> list[str]:
    """Everything an arm changes in recipes/shapes_generator.yaml. No validation prompts: they would only cost
    time at every segment's end (scoring happens here instead)."""
    return [f"loss.kind={arm.method}", *method_keys(arm.method), f"prompts.library=shapesworld:{arm.corpus}",
            f"seed={arm.seed}", "prompts.num_val=0", "train.val_every=0",
            f"render.prompts_per_step={STUDY_PROMPTS_PER_STEP}", *arm.overrides, *extra]


def arm_config(arm: Arm, steps: int, run: Path, device: str = "cpu", extra: list[str] = ()):
    from asdcli.recipe import load_recipe

    return load_recipe(RECIPE, arm_overrides(arm, extra), {"train.steps": steps, "output.dir": str(run),
                                                            "train.device": device})


def fraction_schedules(plain, path: str = "") -> list[str]:
    """Key paths of schedules counted in fractions of `train.steps` in a plain (to_plain) config."""
    if isinstance(plain, dict):
        if plain.get("unit") == "fraction":  # the body of {linear: {...}}: name the scheduled key
            return [path.removesuffix(".linear")]
        return [p for k, v in plain.items() for p in fraction_schedules(v, f"{path}.{k}" if path else str(k))]
    return []


def check_segmentable(cfg) -> None:
    """Segments end a run at an earlier `train.steps`: a schedule counted in fractions of it would stretch."""
    from asdcli.config import to_plain
    from asdcli.errors import UserError

    bad = fraction_schedules(to_plain(cfg))
    if bad:
        raise UserError(f"{', '.join(bad)}: a schedule in fractions of train.steps changes when the study trains in "
                        f"segments; give it in steps (unit: steps)")


def score_steps(total: int, every: int) -> list[int]:
    return sorted({*range(every, total, every), total})


# ------------------------------------------------------------------------------------------------ one arm
def local_step(run: Path) -> int:
    from asdcli.engine.checkpoint import step_dirs

    dirs = step_dirs(run / "checkpoints")
    return json.loads((dirs[-1] / "state.json").read_text())["step"] if dirs else 0


def read_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def check_settings(store: Path, settings: dict) -> None:
    """An arm continues only under the settings it started with (the total steps may grow)."""
    from asdcli.errors import UserError

    file = store / "arm.json"
    if file.is_file():
        old = json.loads(file.read_text())
        diff = sorted(k for k in set(old) | set(settings) if k != "steps" and old.get(k) != settings.get(k))
        if diff:
            raise UserError(f"{store.name}: started with other settings ({', '.join(diff)}: "
                            f"{[old.get(k) for k in diff]} now {[settings.get(k) for k in diff]}); "
                            f"pass the same ones, or --state DIR for a new study")
    store.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(settings, indent=1) + "\n")


def run_arm(arm: Arm, args, deadline: float) -> str:
    """Train the arm segment by segment until its steps or the deadline; score, probe and commit-ready store
    after each segment. Returns the arm's state afterwards."""
    from study_score import score_checkpoint

    from asdcli.engine.trainer import TrainingAborted, fit
    from asdcli.prompts import read_library

    store, run = Path(args.state) / arm.name, Path(args.runs) / arm.name / "run"
    check_segmentable(arm_config(arm, args.steps, run, args.device, args.set))
    check_settings(store, settings_of(arm, args))
    done = study_state.compact_step(store / "state")
    if local_step(run) < done:  # a fresh checkout, or a machine that lost the run: continue from the commit
        study_state.restore(store / "state", run)
    diverged = [e for e in read_rows(store / "events.jsonl") if e.get("diverged")]
    if diverged:  # an outcome, not a failure to retry every sitting
        return f"diverged at step {diverged[-1]['step']} (delete {store / 'events.jsonl'} to try again)"
    lib = read_library(f"shapesworld:{arm.corpus}")
    scored = {r["step"] for r in read_rows(store / "curve.jsonl")}
    for stop in score_steps(args.steps, args.score_every):
        now = local_step(run)
        if stop in scored and stop <= done:
            continue
        if stop > now:
            need = (stop - now) * seconds_per_step(arm, store) + score_seconds(store, args)
            if time.time() + need > deadline:
                return f"paused at step {now} (the next segment needs ~{need / 60:.0f} min)"
            set_run_device(run, args.device)
            t0 = time.time()
            try:
                fit(arm_config(arm, stop, run, args.device, args.set), lib["train"], [], resume=now > 0,
                    quiet=args.quiet)
            except TrainingAborted as exc:  # the last finite checkpoint stays
                if exc.exit_code != 1:  # SIGTERM/SIGINT: checkpoint written, the sitting ends here
                    raise SystemExit(exc.exit_code) from None
                append_row(store / "events.jsonl", {"step": local_step(run), "diverged": True, "event": str(exc)})
                return f"diverged at step {local_step(run)}: {exc}"
            train_s = time.time() - t0
        else:
            train_s = None
        step_dir = run / "checkpoints" / f"step_{stop:06d}"
        if not (step_dir / "state.json").is_file():  # pruned: this sitting's run went past it unscored
            append_row(store / "events.jsonl", {"step": stop, "event": "checkpoint gone before scoring"})
            continue
        row = {"step": stop, "train_seconds": train_s, "device": args.device, **score_checkpoint(step_dir, arm, args)}
        if args.mechanism:
            from asd_direction import mechanism_rows
            from study_report import mechanism_summary

            t0 = time.time()
            mech = mechanism_rows(step_dir, train_sample(args.mechanism_prompts), seed=arm.seed, device=args.device)
            row.update(mechanism=mechanism_summary(mech), mechanism_seconds=time.time() - t0)
            for r in mech:
                append_row(store / "mechanism.jsonl", {"step": stop, **r})
        append_row(store / "curve.jsonl", row)  # last: a row means the step was scored and probed
        study_state.snapshot_weights(step_dir, store / "weights" / f"step_{stop:06d}.safetensors")
        study_state.export(step_dir, run, store / "state")
        done = stop
    return "done"


def score_seconds(store: Path, args) -> float:
    """What scoring and probing took at this arm's last scored step, else --score-seconds."""
    rows = read_rows(store / "curve.jsonl")
    if rows and "seconds" in rows[-1]:
        return rows[-1]["seconds"] + rows[-1].get("mechanism_seconds", 0.0)
    return args.score_seconds


def set_run_device(run: Path, device: str) -> None:
    """Point a run's recipe.yaml at this sitting's device: the engine resumes only an identical recipe, and an
    arm may move between a GPU session and a CPU sitting (every training draw is on the CPU either way)."""
    import yaml

    from asdcli.atomic import write_text_atomic

    file = run / "recipe.yaml"
    if file.is_file():
        data = yaml.safe_load(file.read_text())
        if data["train"]["device"] != device:
            data["train"]["device"] = device
            write_text_atomic(file, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def seconds_per_step(arm: Arm, store: Path) -> float:
    """This arm's own measured rate (its last segment), else the measured CPU rate of its loss."""
    rows = [r for r in read_rows(store / "curve.jsonl") if r.get("train_seconds")]
    if len(rows) >= 2:
        return rows[-1]["train_seconds"] / (rows[-1]["step"] - rows[-2]["step"])
    return MEASURED_S_PER_STEP[arm.method]


def settings_of(arm: Arm, args) -> dict:
    return {"arm": arm.name, "overrides": arm_overrides(arm, args.set), "steps": args.steps,
            "score_every": args.score_every, "train_sample": args.train_sample, "test_sample": args.test_sample,
            "views": args.views, "resolution": args.resolution, "clip": args.clip, "clip_train": args.clip_train,
            "mechanism": args.mechanism}


# ------------------------------------------------------------------------------------------------ sittings
def arm_state(arm: Arm, state_root: Path, steps: int) -> tuple[int, str]:
    done = study_state.compact_step(state_root / arm.name / "state")
    if any(e.get("diverged") for e in read_rows(state_root / arm.name / "events.jsonl")):
        return steps, f"diverged (at step {done})"
    return done, "done" if done >= steps else ("to do" if done == 0 else f"at step {done}")


def measured_score_seconds(state_root: Path, fallback: float) -> float:
    """Mean wall seconds to score and probe one checkpoint over every committed arm's rows, else `fallback`."""
    rows = [r for d in sorted(state_root.glob("*")) for r in read_rows(d / "curve.jsonl") if "seconds" in r]
    if not rows:
        return fallback
    return sum(r["seconds"] + r.get("mechanism_seconds", 0.0) for r in rows) / len(rows)


def plan(arms: list[Arm], args) -> int:
    """The grid, each arm's committed step, and the CPU time left: MEASURED_S_PER_STEP per training step and
    the committed arms' mean time per scored checkpoint (--score-seconds until there is one; 1 thread per arm,
    process CPU time = wall time on an idle core)."""
    rows, train_s, score_s = [], 0.0, 0.0
    per_score = measured_score_seconds(Path(args.state), args.score_seconds)
    for arm in arms:
        done, state = arm_state(arm, Path(args.state), args.steps)
        train = max(args.steps - done, 0) * MEASURED_S_PER_STEP[arm.method]
        score = len([s for s in score_steps(args.steps, args.score_every) if s > done]) * per_score
        train_s, score_s = train_s + train, score_s + score
        rows.append([arm.name, " ".join(arm_overrides(arm)[:1] + list(arm.overrides)), state, (train + score) / 3600])
    common.table(f"study grid: {len(arms)} arms × {args.steps} steps, scored every {args.score_every}",
                 ["arm", "changes", "state", "CPU h left"], rows)
    total, jobs = (train_s + score_s) / 3600, max(1, args.jobs)
    print(f"left: {total:.1f} CPU hours ({train_s / 3600:.1f} training, {score_s / 3600:.1f} scoring at "
          f"{per_score:.0f} s a checkpoint) at 1 thread "
          f"per arm; {total / jobs:.1f} h wall with {jobs} arm(s) at once on idle cores, "
          f"{math.ceil(total / jobs / 2.5)} sittings of 150 min")
    return 0


def run_parallel(arms: list[Arm], args, deadline: float) -> list[str]:
    """Up to args.jobs child processes, one arm each, every one bounded by the same deadline."""
    pending, running, failed = list(arms), [], []
    while pending or running:
        while pending and len(running) < args.jobs:
            arm = pending.pop(0)
            log_dir = Path(args.runs) / arm.name
            log_dir.mkdir(parents=True, exist_ok=True)
            log = open(log_dir / "log.txt", "a")  # noqa: SIM115 - the child owns it until it exits
            cmd = [sys.executable, str(Path(__file__).resolve()), "run", "--only", arm.name, "--jobs", "1",
                   "--deadline", str(deadline), *child_args(args)]
            running.append((arm, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                  env=common.child_env(args.threads))))
        time.sleep(2)
        for arm, proc in [r for r in running if r[1].poll() is not None]:
            running.remove((arm, proc))
            print(f"{arm.name}: exit {proc.returncode}", flush=True)
            failed += [arm.name] if proc.returncode else []
    return failed


def child_args(args) -> list[str]:
    keys = ("steps", "score_every", "threads", "device", "state", "runs", "train_sample", "test_sample", "views",
            "resolution", "clip", "clip_train", "score_seconds", "mechanism", "mechanism_prompts")
    out = [part for k in keys for part in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
    return out + ["--quiet"] + [part for s in args.set for part in ("--set", s)]


def run(arms: list[Arm], args) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads))
    deadline = args.deadline or (time.time() + args.budget_min * 60 if args.budget_min else float("inf"))
    if args.jobs > 1:
        return 1 if run_parallel(arms, args, deadline) else 0
    for arm in arms:
        print(f"{arm.name}: {run_arm(arm, args, deadline)}", flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ CLI
def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("plan", "run", "report", "steptime", "drift"))
    ap.add_argument("--only", nargs="+", default=None, metavar="ARM", help="these arms (names from `plan`)")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"steps per arm (default {STEPS})")
    ap.add_argument("--score-every", type=int, default=SCORE_EVERY, help="steps between scored checkpoints")
    ap.add_argument("--budget-min", type=float, default=None, help="stop starting segments after this long")
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)  # children of --jobs
    ap.add_argument("--score-seconds", type=float, default=53.0,
                    help="s to score and probe a checkpoint until an arm has its own figure (then: the committed "
                    "arms' mean; 53 s over 9 checkpoints, 2 arms at once on the 2 cores, 2026-12-07)")
    ap.add_argument("--jobs", type=int, default=1, help="arms trained at once, in child processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per arm")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (arms resume on either)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every arm")
    ap.add_argument("--state", default=str(STATE), help="committed state and scores (default bench/study)")
    ap.add_argument("--runs", default=str(RUNS), help="local fp32 runs (default bench/results/study_runs)")
    ap.add_argument("--train-sample", type=int, default=64, help="train prompts scored (the 64-prompt corpus)")
    ap.add_argument("--test-sample", type=int, default=64, help="held-out test prompts scored")
    ap.add_argument("--views", type=int, default=4, help="orbit views per prompt for CLIP R@1")
    ap.add_argument("--clip-train", type=int, default=0, help="1: CLIP R@1 on the train sample too")
    ap.add_argument("--resolution", type=int, default=64, help="orbit render side for CLIP R@1")
    ap.add_argument("--clip", default="bundled", help="CLIP for R@1: bundled, a model folder, or none")
    ap.add_argument("--mechanism", type=int, default=1, help="1: probe the update directions at each score")
    ap.add_argument("--mechanism-prompts", type=int, default=8, help="train prompts the probe renders")
    ap.add_argument("--out", default=str(ROOT / "docs" / "study"), help="report: folder of plots and tables")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help="steptime: losses to time")
    ap.add_argument("--time-steps", type=int, default=10, help="steptime: steps timed (after 3 untimed)")
    ap.add_argument("--before", type=int, default=30, help="drift: steps before the compact round trip")
    ap.add_argument("--after", type=int, default=20, help="drift: steps after it")
    ap.add_argument("--quiet", action="store_true", help="no training progress bars")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    grid = build_grid()
    unknown = sorted(set(args.only or ()) - {a.name for a in grid})
    if unknown:
        print(f"error: --only: no arm named {', '.join(unknown)}; arms: {', '.join(a.name for a in grid)}",
              file=sys.stderr)
        return 2
    arms = [a for a in grid if args.only is None or a.name in args.only]
    from asdcli.errors import UserError

    try:
        return dispatch(args, grid, arms)
    except UserError as exc:  # a bad --set, a settings mismatch, a damaged state: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        return 2


def dispatch(args, grid: list[Arm], arms: list[Arm]) -> int:
    if args.command == "plan":
        return plan(arms, args)
    if args.command == "run":
        return run(arms, args)
    if args.command == "report":
        from study_report import report

        return report(grid, Path(args.state), Path(args.out))
    from study_measure import drift_command, steptime_command

    return steptime_command(args) if args.command == "steptime" else drift_command(args)


if __name__ == "__main__":
    sys.exit(main())
