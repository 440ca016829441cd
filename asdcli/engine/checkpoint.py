"""Checkpoints: safetensors + small JSON, written atomically (temp dir + rename), keep-last-K.

Layout of RUN/checkpoints/step_NNNNNN/:
    generator.safetensors   background.safetensors   loss.safetensors (VSD's LoRA, when it has weights)
    optimizer.safetensors + optimizer.json (tensor state / the rest)   rng.safetensors   state.json
`last` is a symlink swapped atomically to the newest complete step directory, so it never names a partial one
(a pointer file holding the directory's name where the file system has no symlinks). Readers never trust `last`
alone: a run copied with `cp -rL`, `scp -r` or `rsync -L` turns it into a stale directory, so they take the newest
step directory that validates and say so when that is not what `last` holds.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from asdcli.atomic import atomic_folder, fsync_dir
from asdcli.errors import UserError, shown
from asdcli.safeio import JSON_MAX_BYTES, read_bounded

STEP_RE = re.compile(r"^step_(\d{6,})$")


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
    # A failed write (full disk, kill) leaves the last checkpoint intact; a step written again (a resumed run
    # stopped at once) is swapped in whole. The temporaries are named .tmp_step_*: prune() clears a killed one's.
    with atomic_folder(final, prefix=f".tmp_step_{step:06d}_") as tmp:
        _write_parts(tmp, step, parts, optimizers, rng, state)
    _point_last(ckpt_root, final.name)
    fsync_dir(ckpt_root)
    prune(ckpt_root, keep_last)
    return final


def _write_parts(tmp: Path, step: int, parts: dict, optimizers: dict, rng: dict, state: dict) -> None:
    t0 = time.perf_counter()
    for name, sd in parts.items():
        if sd:
            _save(_cpu(sd), tmp / f"{name}.safetensors")
    for name, opt_state in optimizers.items():
        opt_tensors, opt_plain = flatten_optimizer(opt_state)
        _save(opt_tensors, tmp / f"{name}.safetensors")
        (tmp / f"{name}.json").write_text(json.dumps(opt_plain))
    _save(_cpu(rng), tmp / "rng.safetensors")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step, "write_s": time.perf_counter() - t0}))


# safetensors' Rust I/O error text: "I/O error: No space left on device (os error 28)" or "Os { code: 28, ..."
_OS_CODE = re.compile(r"(?:os error |code: )(\d+)")


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """save_file, with the OS error it wraps in its own exception type (SafetensorError) raised as the OSError it
    is, so a full disk reads as "no space left" and not as an internal error."""
    try:
        save_file(tensors, str(path))
    except OSError:
        raise
    except Exception as exc:
        code = _OS_CODE.search(str(exc))
        if code is None:
            raise
        num = int(code.group(1))
        raise OSError(num, os.strerror(num), str(path)) from exc


def _point_last(ckpt_root: Path, target: str) -> None:
    """Point `last` at `target` atomically. A `last` that is a directory (a run copied with links followed) is
    moved aside first, since no rename replaces a directory by a link; without symlinks, a pointer file."""
    last, link_tmp = ckpt_root / "last", ckpt_root / f".last_{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    try:
        os.symlink(target, link_tmp)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        link_tmp.write_text(target + "\n")
    if last.is_dir() and not last.is_symlink():
        _retire_copied_last(ckpt_root, last)
    os.replace(link_tmp, last)


def _retire_copied_last(ckpt_root: Path, last: Path) -> None:
    """A `last` directory that is the only copy of its step becomes that step directory (keep_last then applies
    as to any other); a duplicate of an existing step directory is removed."""
    if checkpoint_problem(last) is None:
        own = ckpt_root / f"step_{_parse_state(last)['step']:06d}"
        if not own.exists():
            os.replace(last, own)
            return
    stale = ckpt_root / f".tmp_step_last_{os.getpid()}"  # .tmp_step_*: prune() removes it if we die here
    os.replace(last, stale)
    shutil.rmtree(stale, ignore_errors=True)


def step_dirs(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if STEP_RE.match(p.name) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def any_checkpoint(ckpt_root: Path) -> bool:
    """Whether a resume has something to load: a step directory, or a `last` (copied as a directory)."""
    last = ckpt_root / "last"
    return bool(step_dirs(ckpt_root)) or last.is_dir()


def prune(ckpt_root: Path, keep_last: int) -> None:
    """Delete all but the newest keep_last step directories, and temp leftovers of crashed writes."""
    for p in ckpt_root.glob(".tmp_step_*"):  # debris of writes killed mid-way (SIGKILL skips cleanup)
        shutil.rmtree(p, ignore_errors=True)
    for p in step_dirs(ckpt_root)[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why `ckpt` is not a complete checkpoint (None when it is): state.json readable with an integer step
    matching the directory's name, and generator.safetensors present."""
    try:
        state = _parse_state(ckpt)
    except UserError as exc:
        return str(exc).replace(f"{ckpt}/", "")
    match = STEP_RE.match(ckpt.name)
    if match and int(match.group(1)) != state["step"]:
        return f"state.json says step {state['step']}, the folder step {int(match.group(1))}"
    if not (ckpt / "generator.safetensors").is_file():
        return "generator.safetensors is missing"
    return None


def _checkpoints_root(p: Path) -> Path | None:
    """The folder holding step_NNNNNN/ (and last) for a run directory, a checkpoints folder or `last`."""
    if p.name == "last" and p.parent.is_dir():
        return p.parent
    for root in (p / "checkpoints", p):
        if root.is_dir() and (step_dirs(root) or (root / "last").exists()):
            return root
    return None


def resolve_checkpoint(path: str | Path, announce: bool = True) -> Path:
    """A run directory, its checkpoints/ folder, `last`, or a step directory → a complete step directory.

    For all but a named step directory this is the newest step that validates, whatever `last` holds; when that
    differs from `last` (a stale copy, a damaged newer step) one line on stderr says which step is used."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: checkpoint or run directory not found")
    root = _checkpoints_root(p)
    if root is None:
        if (p / "state.json").exists():  # a step directory named by the user, used as given
            problem = checkpoint_problem(p)
            if problem:
                raise UserError(f"{p}: not a complete checkpoint ({problem}); use another step directory")
            return p.resolve()
        raise UserError(f"{p}: no complete checkpoint inside (expected RUN/checkpoints/step_NNNNNN/ with "
                        f"generator.safetensors); train first with `asd train RECIPE --out {p}`")
    chosen, skipped = _newest_complete(root)
    if announce:
        _announce(root, chosen, skipped)
    return chosen.resolve()


def _newest_complete(root: Path) -> tuple[Path, list[str]]:
    skipped: list[str] = []
    ranked = [(int(STEP_RE.match(d.name).group(1)), 1, d) for d in step_dirs(root)]
    last = root / "last"
    if last.is_dir() and not last.is_symlink():  # a copied `last` ranks by the step it holds; a tie goes to the
        step = _parse_state(last)["step"] if checkpoint_problem(last) is None else -1  # step directory
        ranked.append((step, 0, last))
    for _, _, cand in sorted(ranked, key=lambda r: r[:2], reverse=True):
        problem = checkpoint_problem(cand)
        if problem is None:
            return cand, skipped
        skipped.append(f"{cand.name} ({problem})")
    if skipped:
        raise UserError(f"{root}: no complete checkpoint; {skipped[0]}; the run cannot be loaded")
    raise UserError(f"{root}: no complete checkpoint inside (expected step_NNNNNN/ with generator.safetensors)")


def _announce(root: Path, chosen: Path, skipped: list[str]) -> None:
    """One stderr line when the checkpoint used is not the step `last` names (a stale copy, a pointer to an
    older step) or newer steps were skipped as damaged."""
    last = root / "last"
    step = _parse_state(chosen)["step"]
    held = None
    if last.is_symlink() or last.is_file():
        target = os.readlink(last) if last.is_symlink() else \
            read_bounded(last, 256, "checkpoint pointer").decode("utf-8", "replace").strip()
        match = STEP_RE.match(Path(target).name)
        if match is None or int(match.group(1)) != step:
            held = f"checkpoints/last points at {shown(target)}"
    elif last.is_dir() and chosen != last:
        old = _parse_state(last)["step"] if checkpoint_problem(last) is None else None
        if old != step:
            held = f"checkpoints/last is a stale copy of step {old}" if old is not None else \
                "checkpoints/last is damaged"
    if skipped or held:
        why = "; ".join(filter(None, [held, f"skipped {', '.join(skipped)}" if skipped else ""]))
        print(f"note: using {chosen} (step {step}), the newest complete checkpoint; {why}", file=sys.stderr)


def run_dir_of(ckpt: Path) -> Path:
    """The run directory that holds a step directory (RUN/checkpoints/step_N → RUN)."""
    return ckpt.parent.parent


def load_part(ckpt: Path, name: str, required: bool = False) -> dict[str, torch.Tensor]:
    f = ckpt / f"{name}.safetensors"
    if not f.exists():
        if required:
            raise UserError(f"{f}: missing from the checkpoint; use another step directory")
        return {}
    try:
        return load_file(str(f))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise UserError(f"{f}: damaged checkpoint file ({shown(str(exc))}); use an earlier step directory") from None


def _parse_state(ckpt: Path) -> dict:
    """state.json as a dict whose step (and counters) are non-negative integers; else one UserError line."""
    try:
        state = json.loads(read_bounded(ckpt / "state.json", JSON_MAX_BYTES, "checkpoint state.json"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{ckpt}/state.json: unreadable ({type(exc).__name__}); use an earlier step "
                        f"directory") from None
    if not isinstance(state, dict):
        raise UserError(f"{ckpt}/state.json: expected a JSON object, got {type(state).__name__}")
    for key in ("step", "nonfinite_in_a_row", "nonfinite_total"):
        val = state.get(key, 0)
        if key == "step" and "step" not in state:
            raise UserError(f"{ckpt}/state.json: no \"step\"; the checkpoint is damaged")
        if isinstance(val, bool) or not isinstance(val, int) or val < 0:
            raise UserError(f"{ckpt}/state.json: \"{key}\" must be a non-negative integer, got {shown(val)}")
    return state


def load_state(ckpt: Path) -> dict:
    return _parse_state(ckpt)


def load_optimizer(ckpt: Path, name: str = "optimizer") -> dict | None:
    """An optimizer state saved as NAME.safetensors + NAME.json, or None when the checkpoint has none."""
    if not (ckpt / f"{name}.json").exists():
        return None
    try:
        plain = json.loads(read_bounded(ckpt / f"{name}.json", JSON_MAX_BYTES, "optimizer state"))
        state = unflatten_optimizer(load_part(ckpt, name), plain)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise UserError(f"{ckpt}/{name}.json: damaged optimizer state ({type(exc).__name__}); use an earlier "
                        f"step directory") from None
    return state


def load_optimizer_into(optimizer: torch.optim.Optimizer, ckpt: Path, name: str = "optimizer") -> None:
    """Load NAME.safetensors/.json into `optimizer`, checking first that every saved moment has its parameter's
    shape (torch checks only group sizes, and a wrong shape would fail at the first step, as an internal error)."""
    state = load_optimizer(ckpt, name)
    if state is None:
        raise UserError(f"{ckpt}/{name}.json: missing from the checkpoint; use another step directory")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    try:
        saved_ids = [i for group in state["param_groups"] for i in group["params"]]
        for sid, param in zip(saved_ids, params, strict=True):
            for slot, val in state["state"].get(sid, {}).items():
                if torch.is_tensor(val) and val.dim() > 0 and val.shape != param.shape:
                    raise UserError(f"{ckpt}/{name}.safetensors: {shown(slot)} of parameter {sid} has shape "
                                    f"{tuple(val.shape)}, the model's is {tuple(param.shape)}; the checkpoint "
                                    f"does not fit this recipe")
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError) as exc:  # zip(strict) and torch raise ValueError
        raise UserError(f"{ckpt}/{name}.json: the optimizer state does not fit this model "
                        f"({shown(str(exc))}); use the run's own recipe.yaml") from None


def load_rng(ckpt: Path, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(this rank's generator state, torch's CPU state) from rng.safetensors, checked to be what
    torch.Generator.set_state takes (uint8 of the generator state's length)."""
    rng = load_part(ckpt, "rng", required=True)
    key = f"gen.rank{rank}"
    if key not in rng or "torch_cpu" not in rng:
        raise UserError(f"{ckpt}: no RNG state for rank {rank}; resume with the same number of ranks")
    size = torch.Generator().get_state().numel()
    for name in (key, "torch_cpu"):
        t = rng[name]
        if t.dtype != torch.uint8 or t.dim() != 1 or t.numel() != size:
            raise UserError(f"{ckpt}/rng.safetensors: {name} is {t.dtype} {tuple(t.shape)}, expected uint8 "
                            f"({size},); the checkpoint is damaged; use an earlier step directory")
    return rng[key], rng["torch_cpu"]


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
