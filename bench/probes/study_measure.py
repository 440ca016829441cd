"""Measurements behind the method study's plan: the bundled recipe's step time per loss (`study.py steptime`)
and the drift of a run resumed from the compact state against an uninterrupted one (`study.py drift`)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import common
import study_state
from study import FULL_CORPUS, Arm, arm_config


def step_seconds(method: str, steps: int, extra: list[str], device: str = "cpu", warmup: int = 3) -> dict:
    """Wall and process-CPU seconds per optimiser step of the bundled recipe with this loss (6,118 prompts),
    after `warmup` steps; through the engine's own Trainer.train_step, without checkpoints."""
    from asdcli.engine.trainer import Trainer
    from asdcli.prompts import read_library

    arm = Arm(method, FULL_CORPUS, 0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = arm_config(arm, 10_000, Path(tmp) / "run", device, extra)
        trainer = Trainer(cfg, read_library(cfg.prompts.library)["train"], [], quiet=True)
        for _ in range(warmup):
            trainer.train_step()
        common.sync(device)
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            trainer.train_step()
        common.sync(device)
        wall, cpu = (time.perf_counter() - w0) / steps, (time.process_time() - c0) / steps
    return {"method": method, "steps": steps, "wall_s": wall, "cpu_s": cpu}


def steptime_command(args) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads))
    n = args.time_steps
    rows = [step_seconds(m, n, args.set, args.device) for m in args.methods]
    common.table(f"bundled recipe, s per step ({args.device}, {args.threads} thread(s), {n} steps after 3; "
                 f"load average {common.machine().get('loadavg')})", ["loss", "wall s", "CPU s"],
                 [[r["method"], r["wall_s"], r["cpu_s"]] for r in rows])
    print(json.dumps(rows))
    return 0


def drift_command(args) -> int:
    """Compact-state round trip on one arm's recipe (with --set overrides) at --before / --after steps."""
    import torch

    from asdcli.prompts import read_library

    torch.set_num_threads(max(1, args.threads))
    arm = Arm("asd", FULL_CORPUS, 0)
    prompts = read_library(f"shapesworld:{arm.corpus}")["train"]

    def cfg_at(steps: int, run: Path):
        return arm_config(arm, steps, run, args.device, [*args.set, f"train.checkpoint_every={args.before}"])

    with tempfile.TemporaryDirectory() as tmp:
        out = study_state.drift(cfg_at, prompts, args.before, args.after, Path(tmp), quiet=args.quiet)
    print(json.dumps(out, indent=1))
    return 0
