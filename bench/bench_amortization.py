"""Amortization: time for `asd generate` vs `asd distill` to reach the same ShapesWorld IoU (target ≥ 100×).

    python bench/bench_amortization.py [--quick] [--threads 1] [--gpu] [--checkpoint RUN] [--prompts N]

IoU-matched comparison (when the bundled ShapesWorld generator exists, or --checkpoint names a generator trained on
ShapesWorld prompts): for each of N held-out test prompts, `generate` = generate_mesh at the CLI's default
resolution (128) + writing the GLB, model loaded once beforehand; its field's best-rotation volumetric IoU against
the analytic scene is the target. `distill` = the default `asd distill` recipe on the same prompt, timed over its
training steps only (prior loading, checkpoints and validation excluded, which favours distill); every
--eval-every steps the clock stops, the distilled field's IoU is measured the same way, and the time at which it
first reaches the generate IoU is the answer. If it never does within the recipe's steps (or --budget seconds),
the ratio is reported as a lower bound.

Always measured (the parts that need no bundled model): distill steps/s on the default distill recipe, and
`asd generate` wall time for the tiny recipe's triplane trained 2 steps — in-process after loading, and as a
whole CLI process (interpreter start, imports, model load included).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common


def bundled() -> tuple[Path | None, str | None]:
    """The bundled ShapesWorld generator's checkpoint, or why there is none."""
    try:
        from asdcli.bundled import bundled_checkpoint

        return Path(bundled_checkpoint()), None
    except Exception as exc:  # ImportError while it is being built; UserError when the weights are missing
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"{type(exc).__name__}: {reason}"


def occupancy_fn(model, state):
    """points → inside (bool), at the level `asd generate` meshes: SDF < 0, or the automatic density level."""
    from asdcli.generate import mesh_query_fn
    from asdcli.mesh.grid import sample_grid
    from asdcli.mesh.isosurface import density_threshold

    fn = mesh_query_fn(model, state, 0)
    if model.generator.field_type == "sdf":
        return lambda points: fn(points)[0] < 0
    radius, res = model.cfg.render.radius, 64
    level = density_threshold(sample_grid(fn, res, radius, device=model.device), 2 * radius / (res - 1))
    return lambda points: fn(points)[0] > level


def field_iou(model, prompt: str, res: int, angles: int) -> float:
    """Best-rotation IoU of the model's field for `prompt` against its ShapesWorld scene."""
    from asdcli.engine.inference import field_state
    from asdcli.shapes.world.grammar import parse_prompt
    from asdcli.shapes.world.metrics import iou_field

    was_training = model.generator.training
    model.generator.eval()
    try:
        state, _ = field_state(model, [prompt])
        occ = occupancy_fn(model, state)
        return iou_field(lambda p: occ(p.to(model.device)), parse_prompt(prompt), res, angles)[0]
    finally:
        model.generator.train(was_training)


def generate_timed(model, prompt: str, out: Path, resolution: int = 128) -> dict[str, float]:
    """Seconds ({"wall", "cpu"}) for one `asd generate` after loading: text → mesh → GLB."""
    from asdcli.generate import generate_mesh
    from asdcli.mesh.export import write_mesh

    def once() -> None:
        mesh, _ = generate_mesh(model, prompt, resolution)
        write_mesh(mesh, out)

    return common.time_calls(once, 1, model.device.type)


def median_clocks(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def distill_trainer(prompt: str, run_dir: Path, device: str, steps: int | None = None):
    """A Trainer for `asd distill PROMPT` with the default recipe (the flags distill_command sets)."""
    from asdcli.commands import default_distill_recipe
    from asdcli.engine.trainer import Trainer
    from asdcli.recipe import load_recipe

    flags = {"prompts.items": [prompt], "prompts.library": None, "render.prompts_per_step": 1,
             "output.dir": str(run_dir), "train.device": device}
    if steps is not None:
        flags["train.steps"] = steps
    cfg = load_recipe(default_distill_recipe(), [], flags)
    return Trainer(cfg, [prompt], [prompt], quiet=True)


def distill_to_iou(prompt: str, target: float, args, run_dir: Path, device: str) -> dict:
    """Distill until the field's IoU reaches `target`: training seconds ({"wall", "cpu"}) to get there, or a
    lower bound; the budget is on the primary clock."""
    from asdcli.engine.inference import LoadedModel

    trainer = distill_trainer(prompt, run_dir, device)
    parts = trainer.parts
    model = LoadedModel(trainer.cfg, parts.generator, parts.background, parts.prior.encode_text, run_dir,
                        trainer.device)
    spent, history, primary = {"wall": 0.0, "cpu": 0.0}, [], common.clock(device)
    while trainer.state.step < trainer.cfg.train.steps and spent[primary] < args.budget:
        for key, value in common.time_calls(trainer.train_step, 1, device).items():
            spent[key] += value
        if trainer.state.step % args.eval_every == 0:
            iou = field_iou(model, prompt, args.iou_res, args.iou_angles)
            history.append({"step": trainer.state.step, "train_s": dict(spent), "iou": iou})
            if iou >= target:
                return {"reached": True, "seconds": spent, "steps": trainer.state.step, "history": history}
    return {"reached": False, "seconds": spent, "steps": trainer.state.step, "history": history}


def iou_matched(checkpoint: Path, args, tmp: Path, device: str) -> list[dict]:
    """Per held-out prompt: generate time and IoU, distill time to that IoU, and their ratio (primary clock)."""
    from asdcli.engine.inference import load_model
    from asdcli.shapes.world.grammar import parse_prompt, splits
    from asdcli.shapes.world.metrics import blob_baseline_iou

    model = load_model(checkpoint, device)
    generate_timed(model, "a red cube", tmp / "warmup.glb")  # imports and allocator warm-up, not a real use
    primary, rows = common.clock(device), []
    for i, prompt in enumerate(splits()["test"][:args.prompts]):
        gen_s = median_clocks([generate_timed(model, prompt, tmp / f"gen{i}.glb") for _ in range(3)])
        gen_iou = field_iou(model, prompt, args.iou_res, args.iou_angles)
        dist = distill_to_iou(prompt, gen_iou, args, tmp / f"distill{i}", device)
        rows.append({"prompt": prompt, "generate_s": gen_s, "generate_iou": gen_iou,
                     "blob_iou": blob_baseline_iou(parse_prompt(prompt), args.iou_res),
                     **{f"distill_{k}": v for k, v in dist.items()},
                     "ratio": dist["seconds"][primary] / gen_s[primary], "ratio_is_lower_bound": not dist["reached"]})
    return rows


def distill_rate(args, tmp: Path, device: str) -> dict:
    """Seconds per step ({"wall", "cpu"}) of the default `asd distill` recipe (training steps only)."""
    trainer = distill_trainer("a red cube", tmp / "distill-rate", device)
    for _ in range(2):
        trainer.train_step()
    per_step = common.time_calls(trainer.train_step, 5 if args.quick else 15, device)
    return {"s_per_step": per_step, "recipe_steps": trainer.cfg.train.steps,
            "generator": trainer.cfg.generator.kind, "prior": trainer.cfg.prior.kind}


def cli_generate(run: Path, out: Path, args, device: str) -> dict[str, float]:
    """A whole `asd generate` process: wall time and the child's CPU time (user + system)."""
    import resource

    cmd = [sys.executable, "-m", "asdcli", "generate", "a red cube", "--checkpoint", str(run), "--out", str(out),
           "--device", device]
    out.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=common.child_env(args.threads), cwd=common.ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def tiny_generate(args, tmp: Path, device: str) -> dict:
    """`asd generate` for the tiny recipe trained 2 steps: in-process (after load) and a whole CLI process."""
    from asdcli.engine.inference import load_model
    from asdcli.engine.trainer import fit

    run = tmp / "tiny-run"
    cfg = common.tiny_config([f"train.device={device}"], run_dir=run, steps=2)
    fit(cfg, list(cfg.prompts.items), list(cfg.prompts.items), quiet=True)
    model = load_model(run, device)
    generate_timed(model, "warm up", tmp / "warmup.glb")
    in_process = median_clocks([generate_timed(model, f"a red cube {i}", tmp / "t.glb") for i in range(3)])
    cli = [cli_generate(run, tmp / "cli.glb", args, device) for _ in range(1 if args.quick else 2)]
    return {"in_process_s": in_process, "cli_s": min(cli, key=lambda c: c["wall"]), "resolution": 128}


def report(result: dict) -> list[dict]:
    rate, tiny, clock = result["distill_rate"], result["tiny_generate"], result["clock"]
    step, steps = rate["s_per_step"], rate["recipe_steps"]
    rows = [[f"asd distill default recipe ({rate['generator']} + {rate['prior']} prior): s/step", step["cpu"],
             step["wall"]],
            [f"  projected training time of its {steps} steps, s", steps * step["cpu"], steps * step["wall"]],
            ["asd generate, tiny triplane, res 128, after load: s", tiny["in_process_s"]["cpu"],
             tiny["in_process_s"]["wall"]],
            ["asd generate, whole CLI process (start, imports, load): s", tiny["cli_s"]["cpu"], tiny["cli_s"]["wall"]],
            ["projected distill run / generate (in-process)", *(steps * step[k] / tiny["in_process_s"][k]
                                                                for k in ("cpu", "wall"))],
            ["projected distill run / generate (CLI process)", *(steps * step[k] / tiny["cli_s"][k]
                                                                 for k in ("cpu", "wall"))]]
    tables = [common.table("what is measurable without the bundled model (not IoU-matched)",
                           ["quantity", "CPU time", "wall time"], rows)]
    if result["iou_matched"]:
        tables.append(common.table(
            f"IoU-matched amortization ({result['checkpoint']}; IoU at {result['iou_res']}^3, "
            f"best of {result['iou_angles']} turns; {clock} clock; target ratio >= 100)",
            ["prompt", "generate s", "generate IoU", "blob IoU", "distill s", "distill steps", "reached",
             "ratio"],
            [[r["prompt"], r["generate_s"][clock], r["generate_iou"], r["blob_iou"], r["distill_seconds"][clock],
              r["distill_steps"], r["distill_reached"], (">= " if r["ratio_is_lower_bound"] else "")
              + f"{r['ratio']:.0f}"] for r in result["iou_matched"]]))
    else:
        print(f"IoU-matched amortization: not available: {result['not_available']}")
    return tables


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser(__doc__.splitlines()[0], "amortization")
    ap.add_argument("--checkpoint", help="a ShapesWorld generator run (default: the bundled one)")
    ap.add_argument("--prompts", type=int, default=1, help="held-out test prompts compared")
    ap.add_argument("--eval-every", type=int, default=25, help="distill steps between IoU checks")
    ap.add_argument("--budget", type=float, default=240.0, help="distill training seconds per prompt at most")
    ap.add_argument("--iou-res", type=int, default=32, help="IoU grid resolution")
    ap.add_argument("--iou-angles", type=int, default=8, help="turns about the vertical axis tried for IoU")
    args = ap.parse_args(argv)
    device = common.setup(args)
    checkpoint, reason = (Path(args.checkpoint), None) if args.checkpoint else bundled()
    with tempfile.TemporaryDirectory(prefix="asd-bench-amortization-") as name:
        tmp = Path(name)
        result = {"device": device, "clock": common.clock(device),
                  "checkpoint": str(checkpoint) if checkpoint else None, "not_available": reason,
                  "iou_res": args.iou_res, "iou_angles": args.iou_angles,
                  "distill_rate": distill_rate(args, tmp, device), "tiny_generate": tiny_generate(args, tmp, device),
                  "iou_matched": iou_matched(checkpoint, args, tmp, device) if checkpoint else []}
    result["tables"] = report(result)
    common.write_result(args.out, "amortization", args, result)
    return result


if __name__ == "__main__":
    main()
