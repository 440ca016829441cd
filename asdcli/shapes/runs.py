"""Run directories of the ShapesWorld trainers (2D prior, 4-view prior, CLIP): one safetensors checkpoint with
JSON metadata, written atomically; start-or-resume with config changes recorded in history.jsonl."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from asdcli.atomic import atomic_output
from asdcli.errors import UserError

CHECKPOINT = "checkpoint.safetensors"


HISTORY_FILE = "history.jsonl"  # config changes made by resumes (run_training), copied into exports


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    """AdamW moments and step counts as flat tensors "opt.{param}.{slot}" (the param groups are rebuilt)."""
    return {f"opt.{i}.{k}": v for i, slots in opt.state_dict()["state"].items() for k, v in slots.items()}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            idx, slot = key[4:].split(".", 1)
            state.setdefault(int(idx), {})[slot] = val.clone()
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def save_checkpoint(run_dir: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """One safetensors file (metadata "meta" = JSON), written to a temp name, fsynced and renamed over the old."""
    with atomic_output(checkpoint_path(run_dir)) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata={"meta": json.dumps(meta)})
    return checkpoint_path(run_dir)


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    with safe_open(str(checkpoint_path(run_dir)), "pt") as fh:
        return json.loads(fh.metadata()["meta"])


def load_checkpoint(run_dir: str | Path, command: str = "train-prior/train-clip") -> tuple[dict[str, Tensor],
                                                                                          dict[str, Any]]:
    """(tensors, meta) of a run directory's checkpoint; a missing one is a UserError naming the fix."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train first (python -m asdcli.shapes {command} --out {run_dir})")
    return load_file(str(path)), read_meta(run_dir)


def list_like(value: Any) -> Any:
    """Tuples and lists compare equal (a JSON round trip turns one into the other)."""
    return list(value) if isinstance(value, (tuple, list)) else value


def run_training(out: str | Path, trainer_cls: type, config_cls: type, cfg: Any, resume: bool,
                 steps: int | None, log, stop_after: int | None, device: str = "cpu",
                 overrides: dict | None = None) -> Any:
    """Start or resume a trainer of `trainer_cls` (2D prior, 4-view prior or CLIP) in `out` and run it."""
    out = Path(out)
    resuming = resume and checkpoint_path(out).exists()
    if resuming:
        saved = read_meta(out)["config"]
        cfg = resumed_config(config_cls, saved, overrides or {}, log)
    else:
        cfg = cfg or config_cls()
        out.mkdir(parents=True, exist_ok=True)
    if steps is not None:
        cfg.steps = steps
    trainer = trainer_cls(out, cfg, device)
    if resuming:
        trainer.load()
        log(f"resumed {out} at step {trainer.step}")
        record_resume(out, trainer.step, saved, asdict(cfg))
    trainer.run(log, stop_after)
    return trainer


def record_resume(out: Path, step: int, before: dict[str, Any], after: dict[str, Any]) -> None:
    """Append what a resume changed (steps included) to `history.jsonl` (beside an init_from line, if any): the
    exports copy it into their training record, whose config shows only the last values."""
    changed = {k: [before.get(k), v] for k, v in after.items() if list_like(before.get(k)) != list_like(v)}
    if changed:
        with open(out / HISTORY_FILE, "a") as fh:
            fh.write(json.dumps({"resumed_at": step, "changed": changed}) + "\n")


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """A run's init_from source and the resumes that changed its config, oldest first ([] when neither)."""
    path = Path(run_dir) / HISTORY_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def resumed_config(config_cls: type, saved: dict[str, Any], overrides: dict[str, Any], log) -> Any:
    """The checkpoint's config with `overrides` applied (each change logged); the architecture and init_from
    cannot change."""
    fixed = [k for k in overrides if k in (*config_cls.ARCHITECTURE, "init_from")
             and list_like(overrides[k]) != list_like(saved.get(k))]
    if fixed:
        verb = "shapes" if len(fixed) == 1 else "shape"
        raise UserError(f"--config/--init-from on --resume: {', '.join(fixed)} {verb} the model's starting point "
                        "and cannot change in a run; start a new run (train-prior can start one from this run with "
                        "--init-from)")
    for key in sorted(overrides):
        if list_like(saved.get(key)) != list_like(overrides[key]):
            log(f"resume: {key} {saved.get(key)} → {overrides[key]}")
    return config_cls.from_dict({**saved, **overrides})
