"""CPU training steps with glibc's default malloc against `keep_freed_host_memory`, side by side.

    python bench/bench_host_memory.py [--quick] [--threads 1]

Each measurement is a fresh process (the malloc setting lasts for the whole process): ASD_KEEP_HOST_MEMORY=0 for
glibc's default, 1 for ours. It builds the trainer, runs warm-up steps, then times `--steps` steps on both clocks
and counts their minor page faults. Arms: the ShapesWorld recipe (recipes/shapes_asd.yaml) with 1 and 2 views per
prompt, and the bundled prior's trainer (`python -m asdcli.shapes train-prior`, its default batch of 64), which
does not call it: this arm is why. Rounds alternate the two settings, the order rotated each round; a ratio is
the median of the per-round ratios.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

ARMS = {"shapes_asd, 1 view": ("engine", 1), "shapes_asd, 2 views": ("engine", 2), "train-prior": ("prior", 0)}
MODES = ("default", "keep")


def _engine_step(views: int, tmp: Path):
    from asdcli.engine.trainer import Trainer
    from asdcli.prompts import recipe_prompts

    overrides = [f"render.views_per_prompt={views}", "train.val_every=0"]
    cfg = common.tiny_config(overrides, run_dir=tmp / "run", recipe=common.ROOT / "recipes" / "shapes_asd.yaml")
    trainer = Trainer(cfg, recipe_prompts(cfg)[0], [], quiet=True)
    return trainer.train_step


def _prior_step(tmp: Path):
    from asdcli.engine.host_memory import keep_freed_host_memory
    from asdcli.shapes.prior_data import PriorData
    from asdcli.shapes.train_prior import PriorTrainConfig, PriorTrainer

    keep_freed_host_memory()  # the engine's Trainer calls it; the ShapesWorld trainers do not (no gain here)
    trainer = PriorTrainer(tmp, PriorTrainConfig(pool=256), "cpu")
    trainer.data = PriorData(trainer.cfg, trainer.gen)
    return trainer.train_step


def child(kind: str, views: int, warmup: int, steps: int) -> dict:
    """Time `steps` training steps after `warmup` in this process: seconds per step on both clocks, faults."""
    with tempfile.TemporaryDirectory() as tmp:
        step = _engine_step(views, Path(tmp)) if kind == "engine" else _prior_step(Path(tmp))
        for _ in range(warmup):
            step()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"wall": (time.perf_counter() - wall) / steps, "cpu": (time.process_time() - cpu) / steps,
                "faults": (usage.ru_minflt - faults) / steps, "max_rss_mib": usage.ru_maxrss / 1024}


def measure(arm: str, mode: str, args) -> dict:
    kind, views = ARMS[arm]
    env = {**common.child_env(args.threads), "ASD_KEEP_HOST_MEMORY": "1" if mode == "keep" else "0"}
    cmd = [sys.executable, __file__, "--child", kind, str(views), str(args.warmup), str(args.steps)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def col(rs: list[dict], key: str) -> float:
    """The median over rounds of one measured field."""
    return statistics.median(x[key] for x in rs)


def main(argv: list[str] | None = None) -> dict:
    if argv is None and sys.argv[1:2] == ["--child"]:
        kind, views, warmup, steps = sys.argv[2], *map(int, sys.argv[3:6])
        print(json.dumps(child(kind, views, warmup, steps)))
        return {}
    ap = common.parser(__doc__.splitlines()[0], "host_memory")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per arm (default 3, 2 with --quick)")
    args = ap.parse_args(argv)
    common.setup(args)
    if args.gpu:
        print("error: this benchmark is about host memory on the CPU; run it without --gpu", file=sys.stderr)
        raise SystemExit(2)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.warmup, args.steps = (3, 5) if args.quick else (5, 15)
    runs = {arm: {m: [] for m in MODES} for arm in ARMS}
    for r in range(args.rounds):
        for arm in ARMS:
            for mode in MODES[r % 2:] + MODES[: r % 2]:
                runs[arm][mode].append(measure(arm, mode, args))
    rows = []
    for arm, per in runs.items():
        d, k = per["default"], per["keep"]
        rows.append([arm, 1000 * col(d, "cpu"), 1000 * col(k, "cpu"),
                     common.paired_ratio([x["cpu"] for x in d], [x["cpu"] for x in k]),
                     common.paired_ratio([x["wall"] for x in d], [x["wall"] for x in k]),
                     col(d, "faults"), col(k, "faults"), col(d, "max_rss_mib"), col(k, "max_rss_mib")])
    tab = common.table("CPU training step: glibc's default malloc vs keep_freed_host_memory (medians over rounds)",
                       ["arm", "default ms CPU", "keep ms CPU", "default/keep CPU", "(wall)", "faults/step default",
                        "faults/step keep", "max RSS MiB default", "keep"], rows)
    result = {"tables": [tab], "runs": runs, "load": os.getloadavg()}
    common.write_result(args.out, "host_memory", args, result)
    return result


if __name__ == "__main__":
    main()
