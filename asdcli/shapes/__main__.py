"""Training commands for the bundled ShapesWorld models (`python -m asdcli.shapes COMMAND ...`).

  train-prior --out DIR [--steps N] [--resume] [--init-from RUN] [--device D]   text-to-image prior (diffusers)
  export-prior --from DIR --to FOLDER [--fp32]                   EMA weights → diffusers folder
  eval-prior --model FOLDER [--prompts N] [--cfg 1 3 7.5]        sample with CFG, score vs GT (+ CLIP R@1)
  train-prior-mv --out DIR [--steps N] [--resume] [--device D]  4-view camera-conditioned prior (MVDream path)
  export-prior-mv --from DIR --to FOLDER [--fp32]                EMA weights → MVDreamPrior folder
  eval-prior-mv --model FOLDER [--prompts N] [--cfg 1 3 7.5]     4-view samples vs GT (mask IoU, CLIP R@1 per view)
  train-clip --out DIR [--steps N] [--resume] [--device D]     tiny CLIP (transformers layout)
  export-clip --from DIR --to FOLDER                            CLIPModel + tokenizer + preprocessor config
  eval-clip --model FOLDER [--views V]                          R@1 of GT renders of test prompts (asd protocol)

Bad input exits with code 2 and one line on stderr (`UserError`), as the `asd` commands do.
"""

from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m asdcli.shapes", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("train-prior", "train-clip", "train-prior-mv"):
        t = sub.add_parser(name)
        t.add_argument("--out", required=True, help="run directory (checkpoint, metrics.jsonl)")
        t.add_argument("--steps", type=int, default=None, help="total optimiser steps")
        t.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
        t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the free usable cores)")
        t.add_argument("--batch", type=int, default=None)
        t.add_argument("--seed", type=int, default=None)
        t.add_argument("--config", default=None, help="JSON object of config overrides (with --resume: "
                       "changes from the checkpoint on; not the architecture)")
        if name == "train-prior":
            t.add_argument("--init-from", default=None, help="run directory or exported prior folder "
                           "(bundled:shapes-prior too) whose EMA weights start this run (fine-tuning: fresh "
                           "optimiser, schedule and pool)")
        t.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N for the models (renders stay on "
                                                     "the CPU; --resume is bit-exact on the CPU only)")
    for name in ("export-prior", "export-clip", "export-prior-mv"):
        e = sub.add_parser(name)
        e.add_argument("--from", dest="src", required=True, help="run directory")
        e.add_argument("--to", dest="dest", required=True, help="folder to write (replaced atomically)")
        if name in ("export-prior", "export-prior-mv"):
            e.add_argument("--fp32", action="store_true", help="store float32 weights (default float16)")
    for name, model_help, prompts, grid_help in (
            ("eval-prior", "exported diffusers folder", 24, "write a PNG contact sheet of the samples here"),
            ("eval-prior-mv", "exported 4-view prior folder", 16,
             "write a PNG contact sheet (per prompt: GT, then each CFG)")):
        ep = sub.add_parser(name)
        ep.add_argument("--model", required=True, help=model_help)
        ep.add_argument("--prompts", type=int, default=prompts, help="prompts (half singles, half pairs)")
        ep.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0, 7.5])
        ep.add_argument("--split", default="test", choices=["train", "val", "test"])
        ep.add_argument("--steps", type=int, default=50, help="DDIM steps")
        ep.add_argument("--grid", default=None, help=grid_help)
        ep.add_argument("--threads", type=int, default=None)
        ep.add_argument("--clip", default="bundled:shapes-clip", help="CLIP for R@1 of the samples ('none' to skip)")
    ec = sub.add_parser("eval-clip")
    ec.add_argument("--model", required=True, help="exported CLIP folder")
    ec.add_argument("--views", type=int, default=8, help="orbit views per prompt")
    ec.add_argument("--split", default="test", choices=["train", "val", "test"])
    ec.add_argument("--threads", type=int, default=None)
    return p


def _overrides(cls, args) -> dict:
    """--config's JSON object plus the named flags; unknown keys are one line naming the known ones."""
    from asdcli.errors import UserError

    try:
        overrides = json.loads(args.config) if args.config else {}
    except json.JSONDecodeError as err:
        raise UserError(f"--config: not valid JSON ({err.msg} at character {err.pos}); give an object such as "
                        "'{\"lr\": 4e-4}'") from None
    if not isinstance(overrides, dict):
        raise UserError(f"--config: expected a JSON object of config keys, got {args.config!r}")
    for key in ("batch", "seed", "init_from"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    known = cls().__dict__
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise UserError(f"--config: unknown keys {', '.join(unknown)}; known: {', '.join(known)}")
    return overrides


def _train(fn, cls, args) -> None:
    """A trainer command: a new run from defaults + overrides, or a resumed one with overrides from there on."""
    overrides = _overrides(cls, args)
    fn(args.out, cls.from_dict({**cls().__dict__, **overrides}), resume=args.resume, steps=args.steps,
       device=_device(args.device), overrides=overrides)


def _device(name: str) -> str:
    """--device checked before any model is built: cpu, cuda or cuda:N, and CUDA must be there."""
    from asdcli.config import is_device_name
    from asdcli.engine.components import resolve_device
    from asdcli.errors import UserError

    if not is_device_name(name, auto=False):
        raise UserError(f"--device: expected cpu, cuda or cuda:N, got {name!r}")
    resolve_device(name)  # a UserError naming the fix when CUDA is missing
    return name


def _dispatch(args) -> None:
    if args.command == "train-prior":
        from asdcli.shapes.train_prior import PriorTrainConfig, train_prior

        _train(train_prior, PriorTrainConfig, args)
    elif args.command == "export-prior":
        from asdcli.shapes.train_prior import export_prior

        print(export_prior(args.src, args.dest, fp16=not args.fp32))
    elif args.command == "eval-prior":
        from asdcli.shapes.eval_prior import evaluate_prior

        report = evaluate_prior(args.model, args.prompts, args.cfg, args.split, args.steps, args.grid,
                                clip=None if args.clip == "none" else args.clip)
        print(json.dumps(report, indent=1))
    elif args.command in ("train-prior-mv", "export-prior-mv", "eval-prior-mv"):
        _dispatch_mv(args)
    elif args.command == "train-clip":
        from asdcli.shapes.train_clip import ClipTrainConfig, train_clip

        _train(train_clip, ClipTrainConfig, args)
    elif args.command == "export-clip":
        from asdcli.shapes.train_clip import export_clip

        print(export_clip(args.src, args.dest))
    elif args.command == "eval-clip":
        from asdcli.shapes.train_clip import evaluate_clip

        print(json.dumps(evaluate_clip(args.model, args.views, args.split), indent=1))


def _dispatch_mv(args) -> None:
    """The 4-view prior's commands (asdcli.shapes.train_prior_mv, eval_prior_mv)."""
    if args.command == "train-prior-mv":
        from asdcli.shapes.train_prior_mv import MVPriorTrainConfig, train_prior_mv

        _train(train_prior_mv, MVPriorTrainConfig, args)
    elif args.command == "export-prior-mv":
        from asdcli.shapes.train_prior_mv import export_prior_mv

        print(export_prior_mv(args.src, args.dest, fp16=not args.fp32))
    else:
        from asdcli.shapes.eval_prior_mv import evaluate_prior_mv

        clip = None if args.clip == "none" else args.clip
        report = evaluate_prior_mv(args.model, args.prompts, args.cfg, args.split, args.steps, clip, args.grid)
        print(json.dumps(report, indent=1))


def main(argv: list[str] | None = None) -> int:
    from asdcli.errors import UserError

    args = _parser().parse_args(argv)
    try:
        if hasattr(args, "threads"):  # the exports take no --threads: they do no heavy work
            from asdcli.threads import apply_threads

            apply_threads(args.threads)
        _dispatch(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
