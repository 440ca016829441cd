"""`asd train --threads`: the default thread count against 1 and 2 threads, per recipe, as whole `asd train` runs.

    python bench/bench_threads.py [--quick] [--rounds 3] [--steps 40 24] [--recipes tiny shapes] [--out ...]

Each round runs every setting once as its own `asd train` process (order rotated round to round, so load drift
hits all alike); the figures are medians over rounds of the run's wall time, its CPU time (children's rusage:
with two threads it sums both) and the trainer's own steps/s (wall, fixed start-up cost excluded). "default"
runs without --threads and without OMP_NUM_THREADS, so it resolves the way a user's run does; the count it
resolved to (from the load at that moment) is recorded per round. The last column is wall time per step
relative to the best setting of the same round (1.00 = the best).
"""

from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

RECIPES = {"tiny": common.ROOT / "recipes" / "tiny_cpu.yaml",
           "shapes": common.ROOT / "recipes" / "shapes_generator.yaml"}
SETTINGS = ("default", "1", "2")
DONE = re.compile(r"done: (\d+) steps at ([\d.]+) steps/s")


def run_once(recipe: Path, steps: int, threads: str, out: Path) -> dict[str, float]:
    """One `asd train` process: wall s, CPU s (user + system of the child), steps/s it reported, the default."""
    env = common.child_env(1)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the default must resolve as in a user's shell
        env.pop(key, None)
    cmd = [sys.executable, "-m", "asdcli", "train", str(recipe), "--steps", str(steps), "--out", str(out),
           "train.val_every=0", f"train.checkpoint_every={steps}", "train.log_every=1000"]
    if threads != "default":
        cmd += ["--threads", threads]
    probe = ("from asdcli.threads import default_threads; print(default_threads())")
    resolved = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                              cwd=common.ROOT).stdout.strip() if threads == "default" else threads
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**env, "PYTHONPATH": str(common.ROOT)}, capture_output=True, text=True,
                          cwd=common.ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"asd train failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    match = DONE.search(proc.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "steps_per_s": float(match.group(2)) if match else float("nan"),
            "resolved": float(resolved or "nan")}


def main() -> None:
    ap = common.parser(__doc__.splitlines()[0], "bench_threads")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--steps", type=int, nargs="+", default=[40, 24], help="steps per recipe, in --recipes order")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    result: dict = {"load_start": os.getloadavg()[0], "recipes": {}}
    rows = []
    for name, steps in zip(args.recipes, args.steps, strict=False):
        samples = {s: [] for s in SETTINGS}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(rounds):
                for k, setting in enumerate(SETTINGS[r % 3:] + SETTINGS[:r % 3]):
                    samples[setting].append(run_once(RECIPES[name], steps, setting, Path(tmp) / f"{r}-{k}"))
        per_step = {s: [1 / x["steps_per_s"] for x in v] for s, v in samples.items()}
        best = [min(per_step[s][r] for s in SETTINGS) for r in range(rounds)]
        summary = {}
        for s in SETTINGS:
            rel = statistics.median(per_step[s][r] / best[r] for r in range(rounds))
            summary[s] = {"wall_s": statistics.median(x["wall"] for x in samples[s]),
                          "cpu_s": statistics.median(x["cpu"] for x in samples[s]),
                          "ms_per_step_wall": 1000 * statistics.median(per_step[s]),
                          "vs_best": rel, "resolved": [x["resolved"] for x in samples[s]]}
            rows.append([f"{name} ({steps} steps)", s, summary[s]["resolved"][-1], summary[s]["wall_s"],
                         summary[s]["cpu_s"], summary[s]["ms_per_step_wall"], rel])
        result["recipes"][name] = summary
    result["load_end"] = os.getloadavg()[0]
    result["tables"] = [common.table(f"asd train --threads (whole runs, medians of {rounds} rounds)",
                                   ["recipe", "threads", "resolved", "wall s", "CPU s", "ms/step (wall)",
                                    "per step vs best"], rows)]
    common.write_result(args.out, "bench_threads", args, result)


if __name__ == "__main__":
    main()
