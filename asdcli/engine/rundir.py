"""A run directory that describes itself: recipe.yaml (resolved, plain YAML), meta.json, metrics.jsonl."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from asdcli import __version__
from asdcli.config import RunConfig
from asdcli.errors import UserError
from asdcli.recipe import dump_recipe, load_recipe, read_yaml_mapping


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:  # a full disk leaves the previous file, not a temp file beside it
        tmp.unlink(missing_ok=True)
        raise


def prompts_hash(prompts: list[str]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def prepare_run_dir(cfg: RunConfig, resume: bool, create: bool = True) -> Path:
    """Create (or, with resume, check) the run directory. Nothing existing is overwritten. create=False only
    checks (nothing is written), so a bad --out fails before any model loads."""
    run = cfg.run_dir
    recipe_file = run / "recipe.yaml"
    if resume:
        if not recipe_file.exists():
            raise UserError(f"--resume: {run} holds no run (no recipe.yaml); drop --resume to start one there")
        _check_same_recipe(cfg, load_recipe(raw=read_yaml_mapping(recipe_file)), run)
        return run
    if run.exists() and not run.is_dir():
        raise UserError(f"{run}: exists and is not a directory; choose another --out")
    if run.exists() and any(run.iterdir()):
        raise UserError(f"{run}: run directory exists and is not empty; pass --resume to continue it, "
                        f"or --out NEW_DIR for a new run")
    if not create:
        return run
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{run}: cannot create the run directory ({exc.strerror}); choose another --out") from None
    atomic_write_text(recipe_file, dump_recipe(cfg))
    return run


def _check_same_recipe(new: RunConfig, old: RunConfig, run: Path) -> None:
    """Resuming with a different recipe would silently change the experiment: only train.steps may grow."""
    from asdcli.config import to_plain

    a, b = to_plain(old), to_plain(new)
    a["train"]["steps"] = b["train"]["steps"]
    for key in ("output",):
        a.pop(key), b.pop(key)
    if a != b:
        diff = _first_difference(a, b)
        raise UserError(f"--resume: the recipe differs from {run}/recipe.yaml at {diff}; resume with the same "
                        f"recipe (only train.steps may change)")


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return f"{path} ({a!r} → {b!r})"


def write_meta(run: Path, cfg: RunConfig, step: int, prompts: list[str], extra: dict | None = None) -> None:
    import torch

    meta = {
        "asd_version": __version__, "torch_version": torch.__version__, "python": platform.python_version(),
        "name": cfg.name, "seed": cfg.seed, "step": step, "prompt_library_hash": prompts_hash(prompts),
        "num_prompts": len(prompts), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {}),
    }
    atomic_write_text(run / "meta.json", json.dumps(meta, indent=2))


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step (appended; a resumed run continues the file), mirrored to
    TensorBoard event files in RUN/tensorboard/ when the `tensorboard` package is installed."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled
        self._tb: Any = None  # created at the first write, so a failed start leaves no event files behind

    def _tensorboard(self) -> Any:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional: metrics.jsonl is the log of record
                self._tb = False
            else:
                self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))
        return self._tb

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        tb = self._tensorboard()
        if tb:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    tb.add_scalar(key, value, step)
            tb.flush()
