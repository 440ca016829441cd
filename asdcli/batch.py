"""Batch work over a prompt list: `asd export` (one asset per prompt) and `asd eval` (orbit renders scored)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from asdcli.engine.inference import LoadedModel, field_state, render_orbit
from asdcli.errors import UserError


def prompts_for(model: LoadedModel, prompts_file: Path | None, split: str) -> list[str]:
    """Prompts from --prompts (a split of a JSON library) or, without it, the run's own prompts."""
    from asdcli.prompts import SPLITS, read_split

    if split not in SPLITS:
        raise UserError(f"--split: expected one of {', '.join(SPLITS)}, got {split!r}")
    if prompts_file is not None:
        return read_split(prompts_file, split)
    cfg = model.cfg
    lib = cfg.prompts.library
    if lib is not None and (Path(lib).exists() or lib.split(":")[0] == "shapesworld"):
        return read_split(lib, split)
    if cfg.prompts.items:
        return list(cfg.prompts.items)
    raise UserError("--prompts: the run names no prompt list this machine can read; pass --prompts FILE")


def _progress(quiet: bool, total: int, label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=quiet)


def export_all(model: LoadedModel, prompts: list[str], fmt: str, out: Path, resolution: int,
               overwrite: bool, quiet: bool) -> tuple[int, int, list[tuple[str, str]]]:
    """One mesh per prompt into `out`, plus index.json. Returns (written, skipped, failures)."""
    from asdcli.generate import generate_mesh
    from asdcli.media import write_bytes_atomic
    from asdcli.mesh.export import write_mesh
    from asdcli.mesh.names import assign_filenames

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    names = assign_filenames(prompts)
    written, skipped, failures = 0, 0, []
    with _progress(quiet, len(prompts), "export") as bar:
        task = bar.add_task("export", total=len(prompts))
        for prompt in prompts:
            path = out / f"{names[prompt]}.{fmt}"
            try:
                if path.exists() and not overwrite:
                    skipped += 1
                else:
                    mesh, _ = generate_mesh(model, prompt, resolution)
                    write_mesh(mesh, path)
                    written += 1
            except (UserError, ValueError, RuntimeError) as exc:  # one prompt's failure; the batch goes on
                failures.append((prompt, str(exc)))
            bar.advance(task)
    failed = {prompt for prompt, _ in failures}
    index = {f"{names[p]}.{fmt}": p for p in prompts if p not in failed}
    write_bytes_atomic(out / "index.json", (json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode())
    return written, skipped, failures


def render_all(model: LoadedModel, prompts: list[str], views: int, resolution: int, quiet: bool,
               batch: int = 8) -> torch.Tensor:
    """Orbit renders of every prompt → [P, V, H, W, 3] in [0, 1] (batched generator forwards)."""
    chunks = []
    with _progress(quiet, len(prompts), "render") as bar:
        task = bar.add_task("render", total=len(prompts))
        for start in range(0, len(prompts), batch):
            part = prompts[start:start + batch]
            state, text = field_state(model, part, seed=model.cfg.seed)
            chunks.append(render_orbit(model, state, text, views, resolution)["rgb"])
            bar.advance(task, len(part))
    return torch.cat(chunks)


def contact_sheet_of(images: torch.Tensor, path: Path, max_prompts: int = 16) -> Path:
    """One row per prompt (up to max_prompts), one column per view."""
    from asdcli.media import contact_sheet, save_png

    shown = images[:max_prompts]
    tiles = [np.asarray(v.numpy()) for row in shown for v in row]
    return save_png(contact_sheet(tiles, cols=shown.shape[1], pad=2), path)
