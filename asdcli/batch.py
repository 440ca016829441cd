"""Batch work over a prompt list: `asd export` (one asset per prompt) and `asd eval` (orbit renders scored)."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from asdcli import generate
from asdcli.atomic import write_json_atomic
from asdcli.engine.checkpoint import run_dir_of
from asdcli.engine.inference import LoadedModel, field_state, render_orbit
from asdcli.engine.rundir import PROMPTS_NAME
from asdcli.errors import UserError, shown
from asdcli.media import contact_sheet, save_png
from asdcli.mesh.export import write_mesh
from asdcli.mesh.names import assign_filenames
from asdcli.progress import ProgressReport
from asdcli.prompts import BUNDLED, SPLITS, _check_prompts, read_split
from asdcli.safeio import JSON_MAX_BYTES, read_bounded


def prompts_for(model: LoadedModel, prompts_file: Path | None, split: str) -> list[str]:
    """Prompts from --prompts (a split of a JSON library) or, without it, the run's own prompts: the copy of its
    library it recorded (RUN/prompts.json), its inline prompts.items, or the bundled library it names. A path the
    run's recipe names is never read: a run from elsewhere could name any file on this machine."""
    if split not in SPLITS:
        raise UserError(f"--split: expected one of {', '.join(SPLITS)}, got {shown(split)}")
    if prompts_file is not None:
        return read_split(prompts_file, split)
    cfg = model.cfg
    lib = cfg.prompts.library
    if lib is not None and (lib == BUNDLED or lib.startswith(BUNDLED + ":")):
        return read_split(lib, split)
    recorded = run_dir_of(model.checkpoint) / PROMPTS_NAME
    if lib is not None and recorded.is_file():
        return read_split(recorded, split)
    if cfg.prompts.items:
        return _check_prompts(list(cfg.prompts.items), "prompts.items")  # a run from elsewhere: checked as input
    if lib is not None:
        raise UserError(f"--prompts: the run trained on {shown(lib)}, a file outside the run folder that is read "
                        f"only when named on the command line: pass --prompts FILE")
    raise UserError("--prompts: the run names no prompt list this machine can read; pass --prompts FILE")


DEFAULT_EVAL_PROMPTS = 32
"""`asd eval` without --prompts scores this many prompts of the split, drawn with a fixed seed."""


def eval_prompts(model: LoadedModel, prompts_file: Path | None, split: str, seed: int = 0) -> tuple[list[str], str]:
    """The prompts `asd eval` scores and a line saying which: --prompts FILE → all of it; `--prompts all` → the
    run's whole split; no --prompts → DEFAULT_EVAL_PROMPTS of the run's split drawn with `seed` (in the split's
    order, so the same checkpoint always gets the same set), or all of them when there are fewer."""
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
    return ProgressReport(label, total, quiet=quiet, unit="prompt")


INDEX, SOURCES = "index.json", "index.checkpoints.json"  # file → prompt; file → checkpoint fingerprint


def export_all(model: LoadedModel, prompts: list[str], fmt: str, out: Path, resolution: int,
               overwrite: bool, quiet: bool) -> tuple[int, int, list[tuple[str, str]]]:
    """One mesh per prompt into `out`, plus index.json. Returns (written, skipped, failures).

    An existing file is reused (skipped) only when index.json records it for the same prompt and
    index.checkpoints.json for the same checkpoint; any other file keeps its name and the new mesh gets another.
    index.json is merged with what the folder held, never replaced by this batch's prompts alone."""
    _check_out_folder(out)
    index, sources = _read_map(out / INDEX), _read_map(out / SOURCES)
    fingerprint = checkpoint_fingerprint(model.checkpoint)
    names = _names(out, prompts, fmt, index, sources, fingerprint if not overwrite else None, assign_filenames)
    written, skipped, failures, done = 0, 0, [], {}
    with _progress(quiet, len(prompts), "export") as bar:
        for count, prompt in enumerate(prompts, 1):
            path = out / f"{names[prompt]}.{fmt}"
            try:
                if path.exists() and not overwrite:
                    skipped += 1
                else:
                    mesh, _ = generate.generate_mesh(model, prompt, resolution)
                    write_mesh(mesh, path)
                    written += 1
                done[path.name] = prompt
            except (UserError, ValueError, RuntimeError) as exc:  # one prompt's failure; the batch goes on
                failures.append((prompt, str(exc)))
            bar(count)
    _write_maps(out, {**index, **done}, {**sources, **{name: fingerprint for name in done}})
    return written, skipped, failures


def _names(out: Path, prompts: list[str], fmt: str, index: dict, sources: dict, fingerprint: str | None,
           assign) -> dict[str, str]:
    """File stems: a prompt's recorded file is reused when its checkpoint matches (any, with --overwrite:
    fingerprint None); every other file of this format in `out` is taken."""
    suffix, wanted = f".{fmt}", set(prompts)
    keep = {}
    for name, prompt in sorted(index.items()):
        if name.endswith(suffix) and prompt in wanted and (fingerprint is None or sources.get(name) == fingerprint):
            keep.setdefault(prompt, name[: -len(suffix)])
    kept = {stem + suffix for stem in keep.values()}
    taken = {p.name[: -len(suffix)] for p in out.iterdir() if p.name.endswith(suffix) and p.name not in kept}
    taken |= {name[: -len(suffix)] for name in index if name.endswith(suffix) and name not in kept}
    return assign(prompts, taken=taken, keep=keep)


def _check_out_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the folder ({exc.strerror}); choose another --out") from None
    if not os.access(out, os.W_OK | os.X_OK):  # a read-only folder or file system
        raise UserError(f"--out {out}: the folder is not writable; choose another --out")


def _read_map(path: Path) -> dict[str, str]:
    """index.json / index.checkpoints.json of an earlier export: {file name: text}; {} when absent."""
    if not path.exists():
        return {}
    try:
        data = json.loads(read_bounded(path, JSON_MAX_BYTES, "export index"))
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise UserError(f"{path}: not an export index ({{file: prompt}}); move it away or export to another --out")
    return data


def _write_maps(out: Path, index: dict[str, str], sources: dict[str, str]) -> None:
    present = {name for name in index if (out / name).exists()}  # files deleted since are dropped
    for path, data in ((out / SOURCES, sources), (out / INDEX, index)):
        kept = {k: v for k, v in sorted(data.items()) if k in present}
        write_json_atomic(path, kept, indent=2, ensure_ascii=False)


def checkpoint_fingerprint(ckpt: Path) -> str:
    """SHA-256 (16 hex digits) of the checkpoint's generator weights: equal for copies of one checkpoint."""
    h = hashlib.sha256()
    with open(ckpt / "generator.safetensors", "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


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
    shown = images[:max_prompts]
    tiles = [np.asarray(v.numpy()) for row in shown for v in row]
    return save_png(contact_sheet(tiles, cols=shown.shape[1], pad=2, min_cell=128,
                                  row_labels=prompts[:len(shown)]), path)
