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


DEFAULT_EVAL_PROMPTS = 32
"""`asd eval` without --prompts scores this many prompts of the split, drawn with a fixed seed."""


def eval_prompts(model: LoadedModel, prompts_file: Path | None, split: str, seed: int = 0) -> tuple[list[str], str]:
    """The prompts `asd eval` scores and a line saying which: --prompts FILE → all of it; `--prompts all` → the
    run's whole split; no --prompts → DEFAULT_EVAL_PROMPTS of the run's split drawn with `seed` (in the split's
    order, so the same checkpoint always gets the same set), or all of them when there are fewer."""
    import random

    if prompts_file is not None and str(prompts_file) != "all":
        items = prompts_for(model, prompts_file, split)
        return items, f"scoring the {len(items):,} prompts of {prompts_file}"
    items = prompts_for(model, None, split)
    which = f"{split} prompts" if model.cfg.prompts.library is not None else "prompts"
    if prompts_file is not None or len(items) <= DEFAULT_EVAL_PROMPTS:
        if len(items) == 1:
            return items, f"scoring the run's one prompt: {items[0]!r}"
        return items, f"scoring all {len(items):,} {which} of the run"
    keep = sorted(random.Random(seed).sample(range(len(items)), DEFAULT_EVAL_PROMPTS))
    return ([items[i] for i in keep], f"scoring {DEFAULT_EVAL_PROMPTS} of the run's {len(items):,} {which} "
            f"(seeded sample; --prompts all scores every one)")


def _progress(quiet: bool, total: int, label: str):
    """A rich bar on a terminal, plain lines in a log, nothing with --quiet (asdcli.progress)."""
    from asdcli.progress import ProgressReport

    return ProgressReport(label, total, quiet=quiet, unit="prompt")


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
        for done, prompt in enumerate(prompts, 1):
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
            bar(done)
    failed = {prompt for prompt, _ in failures}
    index = {f"{names[p]}.{fmt}": p for p in prompts if p not in failed}
    write_bytes_atomic(out / "index.json", (json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode())
    return written, skipped, failures


def render_all(model: LoadedModel, prompts: list[str], views: int, resolution: int, quiet: bool,
               batch: int = 8) -> torch.Tensor:
    """Orbit renders of every prompt → [P, V, H, W, 3] in [0, 1] (batched generator forwards)."""
    chunks = []
    with _progress(quiet, len(prompts), "render") as bar:
        for start in range(0, len(prompts), batch):
            part = prompts[start:start + batch]
            state, text = field_state(model, part, seed=model.cfg.seed)
            chunks.append(render_orbit(model, state, text, views, resolution)["rgb"])
            bar(start + len(part))
    return torch.cat(chunks)


def contact_sheet_of(images: torch.Tensor, prompts: list[str], path: Path, max_prompts: int = 16) -> Path:
    """One row per prompt (up to max_prompts) under its prompt, one column per view; views smaller than
    128 px are shown enlarged (pixels repeated) to at least 128 px. images: [P, V, H, W, 3] in [0, 1]."""
    from asdcli.media import contact_sheet, save_png

    shown = images[:max_prompts]
    tiles = [np.asarray(v.numpy()) for row in shown for v in row]
    return save_png(contact_sheet(tiles, cols=shown.shape[1], pad=2, min_cell=128,
                                  row_labels=prompts[:len(shown)]), path)
