"""The `asd` command: five thin commands over one engine. Heavy modules are imported inside commands only,
so `asd --help` never imports torch."""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
import typer.core

from asdcli import __version__
from asdcli.cli_style import DEBUG, FlagsAsFlags, OneLineUsageErrors, guarded, one_line


class _Command(FlagsAsFlags, typer.core.TyperCommand):
    """A command whose usage line names its arguments in capitals without braces: `asd train RECIPE`."""

    def collect_usage_pieces(self, ctx):
        return [re.sub(r"\{([^{}]*)\}", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]


def _examples(*lines: str) -> str:
    """A help epilog: "Examples" and one command per paragraph (rich markup: no square brackets in them)."""
    return "[bold]Examples[/bold]\n\n" + "\n\n".join(lines)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one `warning: ...` line on stderr: no source path, line number or code excerpt."""
    print(f"warning: {one_line(message)}", file=file or sys.stderr)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  cls=OneLineUsageErrors,
                  help="Scalable text-to-3D with Asynchronous Score Distillation (ASD).",
                  context_settings={"help_option_names": ["-h", "--help"]})

QUIET = typer.Option(False, "--quiet", "-q", help="No progress (bars on a terminal, a line every 30 s in a log, "
                     "ASD_PROGRESS_EVERY=seconds); errors still go to stderr.")
DEVICE = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: the recipe's train.device, auto).")
_THREADS: dict[str, Optional[int]] = {"requested": None}  # set while parsing, applied by run_guarded


def _threads(value: Optional[int]) -> Optional[int]:
    _THREADS["requested"] = value  # checked by apply_threads (asdcli.threads.check_threads)
    return value


THREADS = typer.Option(None, "--threads", callback=_threads, help="CPU threads for torch (default: the cores this "
                       "process may use that other work leaves free, at least 1).")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"asd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Train text-to-3D generators with ASD, turn prompts into meshes, and evaluate them."""


def run_guarded(debug: bool, fn, *args, early=None, **kwargs):
    """Run a command body under cli_style.guarded (bad input → one line + exit 2; an internal error → one line +
    exit 1). `early` (no arguments) runs first, before torch is imported to size its threads: checks that need
    no torch; what it returns becomes fn's first argument."""
    from asdcli.progress import interactive

    # The Hugging Face download / weight-loading bars (transformers and huggingface_hub read this when they are
    # imported) follow the same rule as ours: none with --quiet, none in a log, where tqdm's redraws are noise.
    if kwargs.get("quiet") or not interactive():
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

    def body():
        first = () if early is None else (early(),)
        from asdcli.threads import apply_threads

        apply_threads(_THREADS["requested"])  # before any heavy work: the inter-op pool is sized only once
        return fn(*first, *args, **kwargs)

    return guarded(debug, body)


@app.command(cls=_Command, context_settings={"allow_extra_args": False}, epilog=_examples(
    "asd train recipes/tiny_cpu.yaml --out runs/tiny",
    "asd train recipes/shapes_asd.yaml train.lr=0.001 --steps 2000 --out runs/shapes",
    "asd train recipes/shapes_asd.yaml --out runs/shapes --resume"))
def train(
    recipe: Path = typer.Argument(..., metavar="RECIPE", help="Recipe YAML, e.g. recipes/tiny_cpu.yaml."),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE", help="Recipe overrides, e.g. "
                                                    "train.lr=0.01."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps (overrides train.steps)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/NAME)."),
    device: Optional[str] = DEVICE,
    threads: Optional[int] = THREADS,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved recipe and parameter counts; "
                                                          "load no prior weights, train nothing."),
    json_out: bool = typer.Option(False, "--json", help="With --dry-run: print JSON."),
    quiet: bool = QUIET,
    debug: bool = DEBUG,
) -> None:
    """Amortized training of a text-to-3D generator over a prompt library."""
    from asdcli.commands import train_command, train_recipe

    def early() -> dict:
        return train_recipe(recipe, overrides or [], steps=steps, out=out, device=device, dry_run=dry_run)

    run_guarded(debug, train_command, resume=resume, dry_run=dry_run, json_out=json_out, quiet=quiet, early=early)


@app.command(cls=_Command, epilog=_examples(
    'asd distill "a blue torus" --out torus.glb   # run directory: runs/a_blue_torus',
    'asd distill "a red cube" --steps 100 --run-dir runs/cube --out cube.obj',
    'asd distill "a hamburger" --recipe recipes/sd_nerf.yaml --device cuda --out burger.glb'))
def distill(
    prompt: str = typer.Argument(..., metavar="PROMPT", help="The prompt to distil into one 3D field."),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE", help="Recipe overrides, e.g. "
                                                    "train.lr=0.001."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe YAML (default: the bundled one)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps (overrides train.steps)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Mesh written at the end: .glb, .obj or .ply "
                                       "(default RUN/NAME.glb)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run directory (default runs/NAME, NAME "
                                           "the prompt as a safe file name)."),
    resolution: int = typer.Option(128, "--resolution", help="Isosurface grid resolution of the mesh (8-1024)."),
    device: Optional[str] = DEVICE,
    threads: Optional[int] = THREADS,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --run-dir from its last "
                                "checkpoint."),
    quiet: bool = QUIET,
    debug: bool = DEBUG,
) -> None:
    """Per-prompt score distillation into a single 3D field, then its mesh."""
    from asdcli.commands import distill_command

    run_guarded(debug, distill_command, prompt, overrides or [], recipe=recipe, steps=steps, out=out,
                run_dir=run_dir, resolution=resolution, device=device, resume=resume, quiet=quiet)


@app.command(cls=_Command, epilog=_examples(
    'asd generate "a red cube on top of a blue sphere" --out demo.glb',
    'asd generate "a green torus" --out torus.obj --turntable torus.gif --views-png torus.png',
    'asd generate "a red cube" --checkpoint runs/tiny --out cube.ply'))
def generate(
    prompt: str = typer.Argument(..., metavar="PROMPT", help="What to generate, e.g. \"a red cube on top of a "
                                 "blue sphere\"."),
    out: Path = typer.Option(..., "--out", help="Output mesh: .glb, .obj or .ply."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Run or checkpoint directory, or "
                                              "bundled:shapes-generator (the default)."),
    resolution: int = typer.Option(128, "--resolution", help="Isosurface grid resolution (8-1024)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Isosurface level for density "
                                              "fields (default: automatic; SDF fields use 0)."),
    seed: int = typer.Option(0, "--seed", help="Seed for generators that take noise."),
    turntable: Optional[Path] = typer.Option(None, "--turntable", help="Also write a turntable at 256 px, a "
                                             "loop at 24 fps; .gif, or .mp4 with pip install 'asdcli[video]'. "
                                             "Slow on a CPU: 48 frames of the bundled model took 154 s on an "
                                             "idle 2-core CPU (2026-12-07); fewer --frames are quicker."),
    frames: int = typer.Option(48, "--frames", help="Turntable frames (8-360; 48 is 7.5 degrees a frame)."),
    views_png: Optional[Path] = typer.Option(None, "--views-png", help="Also write a contact sheet of orbit "
                                             "views at 256 px, labelled (.png)."),
    views: int = typer.Option(8, "--views", help="Orbit views in --views-png."),
    max_faces: Optional[int] = typer.Option(None, "--max-faces", help="Decimate to at most this many faces."),
    device: Optional[str] = DEVICE,
    threads: Optional[int] = THREADS,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print the time split."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No weight-loading bars; warnings and errors still "
                               "go to stderr, the written file's line to stdout."),
    debug: bool = DEBUG,
) -> None:
    """Prompt → mesh through a trained generator: one forward pass, no per-prompt training.

    Measured 2026-12-07 on an idle 2-core CPU: the bundled model at --resolution 128 took 2.6 s wall and 2.6 s
    of CPU, 1.9x a bare `import torch` (bench/bench_generate_cli.py; -v prints the split).
    """
    from asdcli.commands import generate_command

    run_guarded(debug, generate_command, prompt, out, checkpoint=checkpoint, resolution=resolution,
                threshold=threshold, seed=seed, turntable=turntable, frames=frames, views_png=views_png, views=views,
                max_faces=max_faces, device=device, verbose=verbose, quiet=quiet)


@app.command(cls=_Command, epilog=_examples(
    "asd export bundled:shapes-generator --prompts my_prompts.txt --out assets/",
    "asd export runs/shapes --split val --format obj --out assets_val/",
    "asd export runs/a_blue_torus --out torus/   # a distill run: its one prompt"))
def export(
    run: Path = typer.Argument(..., metavar="RUN", help="Run or checkpoint directory (train or distill), or "
                               "bundled:shapes-generator."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt file (.json library or .txt); "
                                           "not needed for a distill run."),
    split: str = typer.Option("test", "--split", help="Split of a JSON library: train, val or test."),
    fmt: str = typer.Option("glb", "--format", help="glb, obj or ply."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    resolution: int = typer.Option(128, "--resolution", help="Isosurface grid resolution (8-1024)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rewrite assets that already exist."),
    device: Optional[str] = DEVICE,
    threads: Optional[int] = THREADS,
    quiet: bool = QUIET,
    debug: bool = DEBUG,
) -> None:
    """Batch export: one asset per prompt, plus index.json mapping file names to prompts."""
    from asdcli.commands import export_command

    run_guarded(debug, export_command, run, prompts=prompts, split=split, fmt=fmt, out=out,
                resolution=resolution, overwrite=overwrite, device=device, quiet=quiet)


@app.command(name="eval", cls=_Command, epilog=_examples(
    "asd eval --clip-score   # the bundled model, 32 seeded test prompts",
    "asd eval --checkpoint runs/shapes --prompts all --clip-score --json scores.json",
    "asd eval --checkpoint runs/a_blue_torus --sheet views.png"))
def eval_(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Run or checkpoint directory, or "
                                              "bundled:shapes-generator (the default)."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt file (.json library or .txt), or "
                                           "'all' for the run's whole split (default: 32 of its prompts, drawn "
                                           "with a fixed seed)."),
    split: str = typer.Option("test", "--split", help="Split of a JSON library: train, val or test."),
    clip_score: bool = typer.Option(False, "--clip-score", help="CLIP similarity and R@1."),
    clip_model: Optional[str] = typer.Option(None, "--clip-model", help="CLIP hub id or local folder."),
    views: int = typer.Option(8, "--views", help="Orbit views per prompt (the paper uses 120)."),
    resolution: int = typer.Option(64, "--resolution", help="Render side in pixels."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write per-prompt rows + summary as JSON."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write per-prompt rows as CSV."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Write a contact sheet PNG."),
    device: Optional[str] = DEVICE,
    threads: Optional[int] = THREADS,
    quiet: bool = QUIET,
    debug: bool = DEBUG,
) -> None:
    """Render each prompt from N orbit views and score it."""
    from asdcli.commands import eval_command

    run_guarded(debug, eval_command, checkpoint=checkpoint, prompts=prompts, split=split,
                clip_score=clip_score, clip_model=clip_model, views=views, resolution=resolution,
                json_path=json_path, csv_path=csv_path, sheet=sheet, device=device, quiet=quiet)


def main() -> None:
    # The process edge (console script, python -m asdcli): warnings become one line. Not in run_guarded, so
    # in-process callers (tests, notebooks) keep their own warning handling.
    warnings.showwarning = _one_line_warning
    app(prog_name="asd")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
