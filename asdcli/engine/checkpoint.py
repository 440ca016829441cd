"""Checkpoints: safetensors + small JSON, written atomically (temp dir + rename), keep-last-K.

Layout of RUN/checkpoints/step_NNNNNN/:
    generator.safetensors   background.safetensors   loss.safetensors (VSD's LoRA, when it has weights)
    optimizer.safetensors + optimizer.json (tensor state / the rest)   rng.safetensors   state.json
`last` is a symlink swapped atomically to the newest complete step directory, so it never names a partial one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from asdcli.errors import UserError

STEP_RE = re.compile(r"^step_(\d{6,})$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (safetensors) and plain data (JSON)."""
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, slots in state["state"].items():
        plain["state"][str(idx)] = {}
        for name, val in slots.items():
            if torch.is_tensor(val):
                tensors[f"{idx}.{name}"] = val.detach().cpu().contiguous()
            else:
                plain["state"][str(idx)][name] = val
    return tensors, plain


def unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in plain["state"].items()}
    for key, val in tensors.items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = val
    return {"state": state, "param_groups": plain["param_groups"]}


def _cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def all_finite(*state_dicts: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for sd in state_dicts for v in sd.values() if v.is_floating_point())


def save_checkpoint(ckpt_root: Path, step: int, parts: dict[str, dict[str, torch.Tensor]],
                    optimizers: dict[str, dict], rng: dict[str, torch.Tensor], state: dict,
                    keep_last: int) -> Path:
    """Write step_NNNNNN atomically, repoint `last`, prune to keep_last. Returns the final directory.

    parts: name → module state_dict; optimizers: name → optimizer state_dict (NAME.safetensors + NAME.json)."""
    if not all_finite(*parts.values()):
        raise FloatingPointError(f"refusing to write a non-finite checkpoint at step {step}")
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f".tmp_step_{step:06d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_parts(tmp, step, parts, optimizers, rng, state)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write (full disk, kill) leaves the last one intact
        raise
    trash = None
    if final.exists():  # rewriting a step (a resumed run stopped at once): swap, then delete the old copy
        trash = ckpt_root / f".tmp_step_old_{step:06d}_{os.getpid()}"
        os.replace(final, trash)
    os.replace(tmp, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    _point_last(ckpt_root, final.name)
    _fsync_dir(ckpt_root)
    prune(ckpt_root, keep_last)
    return final


def _write_parts(tmp: Path, step: int, parts: dict, optimizers: dict, rng: dict, state: dict) -> None:
    t0 = time.perf_counter()
    for name, sd in parts.items():
        if sd:
            save_file(_cpu(sd), str(tmp / f"{name}.safetensors"))
    for name, opt_state in optimizers.items():
        opt_tensors, opt_plain = flatten_optimizer(opt_state)
        save_file(opt_tensors, str(tmp / f"{name}.safetensors"))
        (tmp / f"{name}.json").write_text(json.dumps(opt_plain))
    save_file(_cpu(rng), str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "step": step, "write_s": time.perf_counter() - t0}))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _point_last(ckpt_root: Path, target: str) -> None:
    link_tmp = ckpt_root / f".last_{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(target, link_tmp)
    os.replace(link_tmp, ckpt_root / "last")


def step_dirs(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if STEP_RE.match(p.name) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def prune(ckpt_root: Path, keep_last: int) -> None:
    """Delete all but the newest keep_last step directories, and temp leftovers of crashed writes."""
    for p in ckpt_root.glob(".tmp_step_*"):  # debris of writes killed mid-way (SIGKILL skips cleanup)
        shutil.rmtree(p, ignore_errors=True)
    for p in step_dirs(ckpt_root)[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory, its checkpoints/ folder, `last`, or a step directory → a complete step directory."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: checkpoint or run directory not found")
    for cand in (p, p / "last", p / "checkpoints" / "last"):
        if (cand / "state.json").exists() and (cand / "generator.safetensors").exists():
            return cand.resolve()
    dirs = step_dirs(p / "checkpoints") or step_dirs(p)
    if dirs:
        return dirs[-1].resolve()
    raise UserError(f"{p}: no complete checkpoint inside (expected RUN/checkpoints/step_NNNNNN/ with "
                    f"generator.safetensors); train first with `asd train RECIPE --out {p}`")


def run_dir_of(ckpt: Path) -> Path:
    """The run directory that holds a step directory (RUN/checkpoints/step_N → RUN)."""
    return ckpt.parent.parent


def load_part(ckpt: Path, name: str) -> dict[str, torch.Tensor]:
    f = ckpt / f"{name}.safetensors"
    if not f.exists():
        return {}
    try:
        return load_file(str(f))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise UserError(f"{f}: damaged checkpoint file ({exc}); use an earlier step directory") from None


def load_state(ckpt: Path) -> dict:
    try:
        return json.loads((ckpt / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{ckpt}/state.json: unreadable ({exc}); use an earlier step directory") from None


def load_optimizer(ckpt: Path, name: str = "optimizer") -> dict | None:
    """An optimizer state saved as NAME.safetensors + NAME.json, or None when the checkpoint has none."""
    if not (ckpt / f"{name}.json").exists():
        return None
    try:
        plain = json.loads((ckpt / f"{name}.json").read_text())
        state = unflatten_optimizer(load_part(ckpt, name), plain)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        raise UserError(f"{ckpt}/{name}.json: damaged optimizer state ({type(exc).__name__}); use an earlier "
                        f"step directory") from None
    return state


def load_weights_strict(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, ckpt: Path) -> None:
    """load_state_dict that explains a mismatch (a checkpoint of another config) in one line."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and own[k].shape != sd[k].shape]
    if missing or unexpected or shapes:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape of {shapes[0]}: checkpoint {tuple(sd[shapes[0]].shape)} vs "
                       f"recipe {tuple(own[shapes[0]].shape)}")
        raise UserError(f"{ckpt}: {what} weights do not fit this {what} config ({detail}); the checkpoint was "
                        f"written with another config; use the run's own recipe.yaml")
    if not all_finite(sd):  # save_checkpoint never writes one, so the file was damaged afterwards
        raise UserError(f"{ckpt}: {what} weights hold NaN or inf; the checkpoint is damaged; use an earlier "
                        f"step directory")
    module.load_state_dict(sd)
