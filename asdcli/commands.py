"""Command bodies: parse → load recipe → call one engine function. Imported only when a command runs.

The torch-free core is imported at the top; modules that load torch are imported inside the commands, so
`asd train` checks its prompt library and weights before torch loads (tests/architecture/test_import_graph.py)."""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from importlib.resources import files
from pathlib import Path

from asdcli.bundled import bundled_clip
from asdcli.config import to_plain
from asdcli.errors import UserError, safe_line, shown
from asdcli.media import check_video_writable
from asdcli.mesh.names import safe_filename
from asdcli.preflight import local_clip, offline_first, resolve, training_weights
from asdcli.progress import interactive
from asdcli.prompts import UnpublishedLibrary, check_library_source, check_prompt, recipe_prompts
from asdcli.recipe import dump_recipe, flag_overrides, load_recipe, merged_recipe
from asdcli.registry import build
from asdcli.shapes.bundled import is_shapesworld_prior
from asdcli.shapes.world.grammar import unknown_words


def train_recipe(recipe: Path, overrides: list[str], *, steps, out, device, dry_run) -> dict:
    """`asd train`'s merged recipe, its prompt library and the weights it names checked (not for a dry run). It
    needs no torch: the CLI runs it before it sizes torch's threads (whose default samples the machine over the
    torch import), so a missing library or weight fails in a fraction of a second."""
    data = merged_recipe(recipe, overrides, flag_overrides(steps, out, device))
    if not dry_run:
        _early_checks(data)
    return data


def train_command(data: dict, *, resume, dry_run, json_out, quiet) -> None:
    """Train on `data`, the merged recipe `train_recipe` returned."""
    cfg = load_recipe(raw=data)
    if dry_run:
        prompts, note = _dry_run_prompts(cfg)
        return dry_run_report(cfg, prompts, json_out, prompts_note=note)
    prompts, val = recipe_prompts(cfg)
    _fit_with_weights(cfg, prompts, val, resume, quiet)


def _early_checks(data: dict) -> None:
    """The prompt library and the weights the recipe names explicitly, checked before validation imports torch
    (seconds): a missing one fails within a second or two. Defaults are checked after validation too."""
    prompts = data.get("prompts")
    library = prompts.get("library") if isinstance(prompts, dict) else None
    if isinstance(library, str):
        check_library_source(library)
    prior = data.get("prior")
    if isinstance(prior, dict):
        resolve(training_weights(prior))


def _dry_run_prompts(cfg) -> tuple[list[str] | None, str | None]:
    """The train prompts, or (None, why) for a library the paper never published: the dry run still reports."""
    try:
        return recipe_prompts(cfg)[0], None
    except UnpublishedLibrary as exc:
        return None, str(exc)


def _fit_with_weights(cfg, prompts, val, resume, quiet):
    """Every weight the prior needs is found (or one line says how to get it) before anything heavy loads."""
    with offline_first(training_weights(cfg.prior)):
        return _fit_and_report(cfg, prompts, val, resume, quiet)


def _fit_and_report(cfg, prompts, val, resume, quiet):
    from asdcli.engine.trainer import TrainingAborted, fit

    try:
        result = fit(cfg, prompts, val, resume=resume, quiet=quiet)
    except TrainingAborted as exc:
        print(f"error: {safe_line(exc)}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    if not quiet:
        print(f"done: {result.step} steps at {result.steps_per_s:.2f} steps/s → {result.run_dir} "
              f"(checkpoint: {result.run_dir}/checkpoints/last)")
    return result


def distill_command(prompt: str, overrides: list[str], *, recipe, steps, out, run_dir, resolution, device, resume,
                    quiet) -> None:
    """Distil PROMPT into one field, then write its mesh: --out, or RUN/NAME.glb. RUN is --run-dir, or the
    recipe's output.root / NAME with NAME the prompt's safe file name ("a blue torus" → runs/a_blue_torus)."""
    from asdcli.generate import MESH_SUFFIXES, check_output_file, check_resolution

    prompt = check_prompt(prompt)
    check_resolution(resolution)
    name = safe_filename(prompt, max_len=60)
    flags = flag_overrides(steps, run_dir, device)
    flags.update({"name": name, "prompts.items": [prompt], "prompts.library": None, "render.prompts_per_step": 1})
    data = merged_recipe(recipe or default_distill_recipe(), overrides, flags)
    _early_checks(data)
    cfg = load_recipe(raw=data)
    if out is not None:  # checked before training, so a long run never ends on an unwritable name
        if not out.suffix and not out.is_file():
            raise UserError(f"--out {out}: --out is the mesh to write (.glb, .obj or .ply); the run directory is "
                            f"--run-dir, e.g. --run-dir {out} --out {out / 'mesh.glb'}")
        check_output_file(out, MESH_SUFFIXES, "--out")
    result = _fit_with_weights(cfg, [prompt], [prompt], resume, quiet)
    _distilled_mesh(result.run_dir, prompt, out or result.run_dir / f"{name}.glb", resolution, device, quiet)


def _distilled_mesh(run_dir: Path, prompt: str, out: Path, resolution: int, device, quiet: bool) -> None:
    """The distilled field's mesh, written at the end of `asd distill`, and what to try next."""
    from asdcli.engine.inference import load_model
    from asdcli.generate import generate_mesh
    from asdcli.mesh.export import write_mesh

    model = load_model(run_dir, device)
    mesh, _ = generate_mesh(model, prompt, resolution)
    write_mesh(mesh, out)
    print(f"wrote {out} ({mesh.num_vertices:,} vertices, {mesh.num_faces:,} faces); run: {run_dir}")
    if not quiet:
        print(f"next: asd eval --checkpoint {run_dir} --sheet {run_dir / 'views.png'}   (orbit views; "
              f"add --resume --steps N to distil longer)")


def default_distill_recipe() -> Path:
    return Path(str(files("asdcli") / "assets" / "recipes" / "distill.yaml"))


def dry_run_report(cfg, prompts: list[str] | None, json_out: bool, prompts_note: str | None = None) -> None:
    """Resolved recipe + parameter counts, built on the meta device: no weights, no memory, no prior.
    `prompts` is None (with `prompts_note` saying why) when the library cannot be read here."""
    # lazy: torch only for the meta-device build: the recipe checks above it stay torch-free
    import torch

    from asdcli.render.background import build_background

    text_dim = getattr(cfg.generator, "text_dim", None) or 0
    with torch.device("meta"):
        generator = build("generator", cfg.generator)
        background = build_background(cfg.render, text_dim)
    counts = {"generator": sum(p.numel() for p in generator.parameters()),
              "background": sum(p.numel() for p in background.parameters())}
    num = len(prompts) if prompts is not None else None
    if json_out:
        report = {"recipe": to_plain(cfg), "parameters": counts, "num_prompts": num}
        print(json.dumps(report | ({"prompts_note": prompts_note} if prompts_note else {}), indent=2))
        return
    print(dump_recipe(cfg), end="")
    for part, n in counts.items():
        print(f"# parameters.{part}: {n:,}")
    print(f"# prompts: {num}" if num is not None else f"# prompts: unavailable: {prompts_note}")


def generate_command(prompt: str, out: Path, *, checkpoint, resolution, threshold, seed, turntable, views_png,
                     views, max_faces, device, verbose, quiet=False, frames: int = 48) -> None:
    del quiet  # read by run_guarded: it silences the Hugging Face weight-loading bars before they are imported

    from asdcli.engine.inference import load_model
    from asdcli.generate import MESH_SUFFIXES, check_output_file, check_resolution, generate_mesh, orbit_media
    from asdcli.mesh.export import write_mesh

    prompt = check_prompt(prompt)
    check_resolution(resolution)
    check_output_file(out, MESH_SUFFIXES, "--out")
    if turntable is not None:
        check_output_file(turntable, (".mp4", ".gif"), "--turntable")
        check_video_writable(turntable)  # before the model loads: no silent switch to .gif
    if views_png is not None:
        check_output_file(views_png, (".png",), "--views-png")
    check_resolution(views, "--views", 1, 360)
    check_resolution(frames, "--frames", 8, 360)
    if max_faces is not None and max_faces < 4:
        raise UserError(f"--max-faces: must be at least 4, got {max_faces}")
    if threshold is not None and not math.isfinite(threshold):
        raise UserError(f"--threshold: must be a finite number, got {threshold}")
    t0 = time.perf_counter()
    model = load_model(checkpoint, device)
    load_s = time.perf_counter() - t0
    _warn_vocabulary(model, [prompt])
    mesh, timings = generate_mesh(model, prompt, resolution, threshold, seed, max_faces)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_mesh(mesh, out)
    timings.add("write", time.perf_counter() - t0)
    extra = (orbit_media(model, prompt, views, seed, turntable, views_png, frames=frames)
             if (turntable or views_png) else [])
    print(f"wrote {out} ({mesh.num_vertices:,} vertices, {mesh.num_faces:,} faces)"
          + "".join(f", {p}" for p in extra))
    if verbose:
        print(f"load {load_s * 1000:.0f} ms (once) · {timings.line()}")


def _warn_vocabulary(model, prompts: list[str]) -> None:
    """A model trained against a ShapesWorld prior (2D or 4-view) knows a small vocabulary, which its tokenizer
    spells in bytes the generator never saw: name the words outside it (no crash)."""
    if not is_shapesworld_prior(getattr(model.cfg.prior, "model", None)):  # tiny-random has no model
        return
    for prompt in prompts:
        unknown = unknown_words(prompt)
        if unknown:
            warnings.warn(f"words outside the model's vocabulary: {safe_line(', '.join(unknown))} "
                          f"(in {shown(prompt)})", stacklevel=2)


def export_command(run: Path, *, prompts, split, fmt, out, resolution, overwrite, device, quiet) -> None:
    from asdcli.batch import export_all, prompts_for
    from asdcli.engine.inference import load_model
    from asdcli.generate import check_resolution

    fmt = fmt.lower().lstrip(".")
    if fmt not in ("glb", "obj", "ply"):
        raise UserError(f"--format: expected glb, obj or ply, got {fmt!r}")
    check_resolution(resolution)
    model = load_model(run, device)
    items = prompts_for(model, prompts, split)
    _warn_vocabulary(model, items)
    written, skipped, failures = export_all(model, items, fmt, out, resolution, overwrite, quiet)
    print(f"exported {written} asset(s) to {out} ({skipped} existing skipped, {len(failures)} failed); "
          f"index: {out / 'index.json'}")

    for prompt, reason in failures:
        print(f"failed: {shown(prompt)}: {safe_line(reason)}", file=sys.stderr)
    if failures:
        raise SystemExit(1)


def eval_command(*, checkpoint, prompts, split, clip_score, clip_model, views, resolution, json_path, csv_path,
                 sheet, device, quiet) -> None:
    from asdcli.batch import contact_sheet_of, eval_prompts, render_all
    from asdcli.engine.inference import load_model
    from asdcli.evaluate import ClipScorer, EvalReport
    from asdcli.generate import check_output_file, check_resolution

    check_resolution(views, "--views", 1, 360)
    check_resolution(resolution, "--resolution", 16, 1024)
    for path, suffix, flag in ((json_path, ".json", "--json"), (csv_path, ".csv", "--csv"),
                               (sheet, ".png", "--sheet")):
        if path is not None:
            check_output_file(path, (suffix,), flag)
    clip_source = None
    if clip_score:  # found (or one line saying how to get it) before the generator and renders load
        clip_source = local_clip(clip_model) if clip_model else _default_clip()
    model = load_model(checkpoint, device)
    items, which = eval_prompts(model, prompts, split)
    if not quiet:
        print(which)
    metrics: dict = {}
    meta = {"checkpoint": str(model.checkpoint), "views": views, "resolution": resolution, "prompts": which,
            "protocol": f"{views} orbit views at {model.cfg.render.camera.eval_elevation:g}° elevation "
                        f"(the paper uses 120)"}
    scorer = None
    if clip_score:
        scorer = ClipScorer(clip_source, device=model.device)
        meta["clip_model"] = str(clip_model or "bundled ShapesWorld CLIP")
    images = render_all(model, items, views, resolution, quiet)
    if scorer is not None:
        metrics.update(scorer.score(items, images))
    metrics.update(_ground_truth_metrics(model, items))
    report = EvalReport.build(items, metrics, meta)
    _emit_report(report, json_path, csv_path, quiet)
    if sheet is not None:
        contact_sheet_of(images, items, sheet)
    if not metrics and not quiet:
        print("no metric requested: pass --clip-score (renders were made; --sheet writes them)")


def _emit_report(report, json_path, csv_path, quiet) -> None:
    if json_path is not None:
        report.write_json(json_path)
    if csv_path is not None:
        report.write_csv(csv_path)
    if not quiet and report.metric_names:
        # lazy: rich's console only when a table is printed
        from rich.console import Console

        # In a log rich assumes 80 columns and cuts every number to "0…": give the table room instead.
        Console(width=None if interactive() else 200).print(report.table(title="asd eval"))
        print(report.meta["protocol"])


def _default_clip() -> str:
    return str(bundled_clip())


def _ground_truth_metrics(model, prompts: list[str]) -> dict:
    """ShapesWorld prompts have analytic scenes: IoU, blob baseline, shape_r@1, colour error."""
    from asdcli.shapes.evaluation import ground_truth_metrics

    return ground_truth_metrics(model, prompts)
