"""The ShapesWorld recipe users run (recipes/shapes_generator.yaml): its training step against its prior work.

    python bench/bench_shapes_step.py [--quick] [--rounds 5] [--device cpu|cuda] [--profile] [--out ...]

Side by side in one interleaved run (bench_engine's definitions, on this recipe and its bundled prior):
- "prior work": encode a render of the step's shape, ONE batched no-grad UNet call over ASD's 3B rows, backward
  through encode;
- "no engine": text → generator → render (normals and eikonal double backward) → the same prior work →
  backward → Adam step, with fixed prompts and cameras;
- "step": `Trainer.train_step` (on CPU with the fused triplane kernel, generators/fused.py);
- "step, eager field": the same with ASD_FUSED=0 (the field in eager torch ops).
CPU: one torch thread (--threads), process CPU time; CUDA (--device cuda): wall time with synchronisation.
--profile: also a torch.profiler table of a few steps (self CPU time per op), to find what to speed up.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import common

RECIPE = common.ROOT / "recipes" / "shapes_generator.yaml"


def profile_steps(trainer, steps: int = 4, rows: int = 25) -> str:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        trainer.train_step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step()
    key = "self_cuda_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def eager_field(step):
    """`step` with the fused triplane kernel turned off (ASD_FUSED=0): the same step on the eager path."""
    def run():
        previous = os.environ.get("ASD_FUSED")
        os.environ["ASD_FUSED"] = "0"
        try:
            return step()
        finally:
            if previous is None:
                del os.environ["ASD_FUSED"]
            else:
                os.environ["ASD_FUSED"] = previous
    return run


def main(argv: list[str] | None = None) -> dict:
    from bench_engine import build_trainers, no_engine_fn, prior_work_fn

    ap = common.parser(__doc__.splitlines()[0], "shapes_step")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    args.gpu = args.gpu or args.device == "cuda"
    device = common.setup(args)
    rounds = 2 if args.quick else args.rounds
    overrides = [f"train.device={device}", "train.val_every=0", "train.steps=10000"]
    with tempfile.TemporaryDirectory(prefix="asd-bench-shapes-") as name:
        trainer = build_trainers(overrides, Path(name), RECIPE, kinds=("asd",))["asd"]
        fns = {"prior work": prior_work_fn(trainer), "no engine": no_engine_fn(trainer), "step": trainer.train_step,
               "step, eager field": eager_field(trainer.train_step)}
        samples = common.interleaved(fns, rounds, 2, warmup=2, device=device)
        pairs = {"step/prior_work": ("step", "prior work"), "step/no_engine": ("step", "no engine"),
                 "eager/prior_work": ("step, eager field", "prior work")}
        summary = common.summarise(samples, device, pairs)
        profile = profile_steps(trainer) if args.profile else ""
    if profile:
        print(profile)
    clock = summary["clock"]
    table = common.table(
        f"recipes/shapes_generator.yaml on {device}: step vs prior work ({clock} ms, medians of {rounds} rounds)",
        ["prior work ms", "no-engine ms", "step ms", "step/prior", "(other clock)", "step/no-engine",
         "eager-field step ms", "eager step/prior"],
        [[summary["ms"]["prior work"], summary["ms"]["no engine"], summary["ms"]["step"],
          summary["ratios"]["step/prior_work"],
          summary["ratios_wall" if clock == "cpu" else "ratios_cpu"]["step/prior_work"],
          summary["ratios"]["step/no_engine"], summary["ms"]["step, eager field"],
          summary["ratios"]["eager/prior_work"]]])
    result = {"recipe": str(RECIPE.relative_to(common.ROOT)), "device": device, "rounds": rounds, **summary,
              "samples_s": samples, "tables": [table], "profile": profile}
    common.write_result(args.out, "shapes_step", args, result)
    return result


if __name__ == "__main__":
    main()
