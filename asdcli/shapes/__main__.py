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

A Typer app like `asd`: bad input (usage, --config, --device, a missing run) exits with code 2 and one line on
stderr. Heavy modules are imported inside the commands, so `--help` imports no torch.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Optional

import typer
import typer.core

from asdcli.cli_style import DEBUG, FlagsAsFlags, OneLineUsageErrors, guarded

PROG = "python -m asdcli.shapes"


class _Command(FlagsAsFlags, typer.core.TyperCommand):
    """Flags show as `--resume`, not `--resume <bool>`, as in `asd`'s help."""


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  cls=OneLineUsageErrors, help=__doc__.splitlines()[0],
                  context_settings={"help_option_names": ["-h", "--help"]})

OUT = typer.Option(..., "--out", help="run directory (checkpoint, metrics.jsonl)")
STEPS = typer.Option(None, "--steps", help="total optimiser steps")
RESUME = typer.Option(False, "--resume", help="continue from the run directory's checkpoint")
THREADS = typer.Option(None, "--threads", help="torch CPU threads (default: the free usable cores)")
BATCH = typer.Option(None, "--batch")
SEED = typer.Option(None, "--seed")
CONFIG = typer.Option(None, "--config", help="JSON object of config overrides (with --resume: changes from the "
                      "checkpoint on; not the architecture)")
DEVICE = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N for the models (renders stay on the CPU; "
                      "--resume is bit-exact on the CPU only)")
SRC = typer.Option(..., "--from", help="run directory")
DEST = typer.Option(..., "--to", help="folder to write (replaced atomically)")
FP32 = typer.Option(False, "--fp32", help="store float32 weights (default float16)")
CFG = typer.Option([1.0, 3.0, 7.5], "--cfg", help="guidance scales, one or more: --cfg 1 3 7.5")
SPLIT = typer.Option(Split.test, "--split")
DDIM_STEPS = typer.Option(50, "--steps", help="DDIM steps")
CLIP = typer.Option("bundled:shapes-clip", "--clip", help="CLIP for R@1 of the samples ('none' to skip)")


def _guarded(fn, *args, threads: int | None | bool = False, debug: bool = False, **kwargs) -> None:
    """Run a command body under cli_style.guarded, as `asd` does: bad input (a UserError or a prompt outside the
    grammar) → `error: ...` on one line, exit 2; an internal error → one line, exit 1 (the traceback with
    --debug). threads False: the command takes no --threads (the exports do no heavy work); else applied first."""
    from asdcli.shapes.world.grammar import PromptError

    def body():
        if threads is not False:
            from asdcli.threads import apply_threads

            apply_threads(threads)
        fn(*args, **kwargs)

    guarded(debug, body, user_errors=(PromptError,))


def _overrides(cls, config: str | None, named: dict) -> dict:
    """--config's JSON object plus the named flags; unknown keys are one line naming the known ones."""
    from asdcli.errors import UserError

    try:
        overrides = json.loads(config) if config else {}
    except json.JSONDecodeError as err:
        raise UserError(f"--config: not valid JSON ({err.msg} at character {err.pos}); give an object such as "
                        "'{\"lr\": 4e-4}'") from None
    if not isinstance(overrides, dict):
        raise UserError(f"--config: expected a JSON object of config keys, got {config!r}")
    overrides.update({k: v for k, v in named.items() if v is not None})
    known = cls().__dict__
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise UserError(f"--config: unknown keys {', '.join(unknown)}; known: {', '.join(known)}")
    return overrides


def _device(name: str) -> str:
    """--device checked before any model is built: cpu, cuda or cuda:N, and CUDA must be there."""
    from asdcli.config import is_device_name
    from asdcli.engine.components import resolve_device
    from asdcli.errors import UserError

    if not is_device_name(name, auto=False):
        raise UserError(f"--device: expected cpu, cuda or cuda:N, got {name!r}")
    resolve_device(name)  # a UserError naming the fix when CUDA is missing
    return name


def _train(module: str, trainer: str, config_cls: str, out: str, steps, resume: bool, config, device: str,
           named: dict) -> None:
    """A trainer command: a new run from defaults + overrides, or a resumed one with overrides from there on."""
    from importlib import import_module

    mod = import_module(f"asdcli.shapes.{module}")
    cls = getattr(mod, config_cls)
    overrides = _overrides(cls, config, named)
    getattr(mod, trainer)(out, cls.from_dict({**cls().__dict__, **overrides}), resume=resume, steps=steps,
                          device=_device(device), overrides=overrides)


@app.command("train-prior", cls=_Command)
def train_prior(out: str = OUT, steps: Optional[int] = STEPS, resume: bool = RESUME,
                threads: Optional[int] = THREADS, batch: Optional[int] = BATCH, seed: Optional[int] = SEED,
                config: Optional[str] = CONFIG,
                init_from: Optional[str] = typer.Option(None, "--init-from", help="run directory or exported "
                                                        "prior folder (bundled:shapes-prior too) whose EMA "
                                                        "weights start this run (fine-tuning: fresh optimiser, "
                                                        "schedule and pool)"),
                device: str = DEVICE, debug: bool = DEBUG) -> None:
    """Train the text-to-image prior (diffusers layout)."""
    _guarded(_train, "train_prior", "train_prior", "PriorTrainConfig", out, steps, resume, config, device,
             {"batch": batch, "seed": seed, "init_from": init_from}, threads=threads, debug=debug)


@app.command("train-clip", cls=_Command)
def train_clip(out: str = OUT, steps: Optional[int] = STEPS, resume: bool = RESUME,
               threads: Optional[int] = THREADS, batch: Optional[int] = BATCH, seed: Optional[int] = SEED,
               config: Optional[str] = CONFIG, device: str = DEVICE, debug: bool = DEBUG) -> None:
    """Train the tiny CLIP (transformers layout)."""
    _guarded(_train, "train_clip", "train_clip", "ClipTrainConfig", out, steps, resume, config, device,
             {"batch": batch, "seed": seed}, threads=threads, debug=debug)


@app.command("train-prior-mv", cls=_Command)
def train_prior_mv(out: str = OUT, steps: Optional[int] = STEPS, resume: bool = RESUME,
                   threads: Optional[int] = THREADS, batch: Optional[int] = BATCH, seed: Optional[int] = SEED,
                   config: Optional[str] = CONFIG, device: str = DEVICE, debug: bool = DEBUG) -> None:
    """Train the 4-view camera-conditioned prior (MVDream path)."""
    _guarded(_train, "train_prior_mv", "train_prior_mv", "MVPriorTrainConfig", out, steps, resume, config,
             device, {"batch": batch, "seed": seed}, threads=threads, debug=debug)


def _export(module: str, fn: str, *args, **kwargs) -> None:
    from importlib import import_module

    print(getattr(import_module(f"asdcli.shapes.{module}"), fn)(*args, **kwargs))


@app.command("export-prior", cls=_Command)
def export_prior(src: str = SRC, dest: str = DEST, fp32: bool = FP32, debug: bool = DEBUG) -> None:
    """EMA weights of a train-prior run → a diffusers folder."""
    _guarded(_export, "train_prior", "export_prior", src, dest, fp16=not fp32, debug=debug)


@app.command("export-clip", cls=_Command)
def export_clip(src: str = SRC, dest: str = DEST, debug: bool = DEBUG) -> None:
    """A train-clip run → CLIPModel + tokenizer + preprocessor config."""
    _guarded(_export, "train_clip", "export_clip", src, dest, debug=debug)


@app.command("export-prior-mv", cls=_Command)
def export_prior_mv(src: str = SRC, dest: str = DEST, fp32: bool = FP32, debug: bool = DEBUG) -> None:
    """EMA weights of a train-prior-mv run → an MVDreamPrior folder."""
    _guarded(_export, "train_prior_mv", "export_prior_mv", src, dest, fp16=not fp32, debug=debug)


def _eval_prior(model, prompts, cfg, split, steps, grid, clip) -> None:
    from asdcli.shapes.eval_prior import evaluate_prior

    print(json.dumps(evaluate_prior(model, prompts, cfg, split, steps, grid, clip=clip), indent=1))


def _eval_prior_mv(model, prompts, cfg, split, steps, grid, clip) -> None:
    from asdcli.shapes.eval_prior_mv import evaluate_prior_mv

    print(json.dumps(evaluate_prior_mv(model, prompts, cfg, split, steps, clip, grid), indent=1))


@app.command("eval-prior", cls=_Command)
def eval_prior(model: str = typer.Option(..., "--model", help="exported diffusers folder"),
               prompts: int = typer.Option(24, "--prompts", help="prompts (half singles, half pairs)"),
               cfg: list[float] = CFG, split: Split = SPLIT, steps: int = DDIM_STEPS,
               grid: Optional[str] = typer.Option(None, "--grid", help="write a PNG contact sheet of the "
                                                  "samples here"),
               threads: Optional[int] = THREADS, clip: str = CLIP, debug: bool = DEBUG) -> None:
    """Sample with CFG and score against the ground truth (+ CLIP R@1)."""
    _guarded(_eval_prior, model, prompts, cfg, split.value, steps, grid, None if clip == "none" else clip,
             threads=threads, debug=debug)


@app.command("eval-prior-mv", cls=_Command)
def eval_prior_mv(model: str = typer.Option(..., "--model", help="exported 4-view prior folder"),
                  prompts: int = typer.Option(16, "--prompts", help="prompts (half singles, half pairs)"),
                  cfg: list[float] = CFG, split: Split = SPLIT, steps: int = DDIM_STEPS,
                  grid: Optional[str] = typer.Option(None, "--grid", help="write a PNG contact sheet (per "
                                                     "prompt: GT, then each CFG)"),
                  threads: Optional[int] = THREADS, clip: str = CLIP, debug: bool = DEBUG) -> None:
    """4-view samples against the ground truth (mask IoU, CLIP R@1 per view)."""
    _guarded(_eval_prior_mv, model, prompts, cfg, split.value, steps, grid, None if clip == "none" else clip,
             threads=threads, debug=debug)


def _eval_clip(model: str, views: int, split: str) -> None:
    from asdcli.shapes.train_clip import evaluate_clip

    print(json.dumps(evaluate_clip(model, views, split), indent=1))


@app.command("eval-clip", cls=_Command)
def eval_clip(model: str = typer.Option(..., "--model", help="exported CLIP folder"),
              views: int = typer.Option(8, "--views", help="orbit views per prompt"),
              split: Split = SPLIT, threads: Optional[int] = THREADS, debug: bool = DEBUG) -> None:
    """R@1 of GT renders of the split's prompts (the asd protocol)."""
    _guarded(_eval_clip, model, views, split.value, threads=threads, debug=debug)


def spread_cfg(argv: list[str]) -> list[str]:
    """`--cfg 1 3 7.5` (argparse's nargs="+", which the docs use) as click's `--cfg 1 --cfg 3 --cfg 7.5`: the
    values after --cfg run up to the next option (a negative number is a value); `--cfg` with none stays bare,
    so click reports that it needs a value."""
    out, i = [], 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        if arg == "--":
            return out + argv[i - 1:]
        if arg != "--cfg":
            out.append(arg)
            continue
        values = []
        while i < len(argv) and argv[i] != "--" and (not argv[i].startswith("-") or _is_number(argv[i])):
            values.append(argv[i])
            i += 1
        out += [x for v in values for x in ("--cfg", v)] or ["--cfg"]
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (0, 2 for bad input) instead of exiting, for tests."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        app(args=spread_cfg(args), prog_name=PROG)
    except SystemExit as exc:  # the group always exits (usage errors: one line, code 2)
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
