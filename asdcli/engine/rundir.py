"""A run directory that describes itself: recipe.yaml (resolved, plain YAML), prompts.json (the prompt library
it trained on, so `asd export RUN` never has to read a file the recipe names), meta.json, metrics.jsonl; and
`.lock`, the advisory lock one `asd train` holds on it while it runs (released by the kernel on any exit)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import platform
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from asdcli import __version__
from asdcli.atomic import write_text_atomic
from asdcli.config import RunConfig, to_plain
from asdcli.errors import UserError, shown
from asdcli.prompts import BUNDLED, read_library
from asdcli.recipe import dump_recipe, load_recipe, read_yaml_mapping


def prompts_hash(prompts: list[str]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


LOCK_NAME = ".lock"
_HELD: dict[Path, int] = {}  # run directory → descriptor whose flock this process holds


def lock_run_dir(run: Path) -> None:
    """Take the run's advisory lock (fcntl.flock on RUN/.lock, which records the holder's pid). flock is
    released by the kernel when the process ends however it ends, so a lock file left behind by a killed run is
    stale and simply taken over; a lock held by a live process is one UserError line naming its pid."""
    key = run.resolve()
    if key in _HELD:
        return
    fd = os.open(run / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        raise UserError(f"{run}: in use by another asd run (pid {holder}{_liveness(holder)}); wait for it to "
                        f"finish or stop it, or pass another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = fd


def _liveness(pid: str) -> str:
    """'' for a live holder; a hint when the recorded pid is gone (a child that inherited the lock holds it)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return ", no longer running: a process it started still holds the lock"
    except PermissionError:
        pass
    return ""


def unlock_run_dir(run: Path) -> None:
    fd = _HELD.pop(run.resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock


def _is_empty(run: Path) -> bool:
    return not any(p.name != LOCK_NAME for p in run.iterdir())


def prepare_run_dir(cfg: RunConfig, resume: bool, create: bool = True) -> Path:
    """Create (or, with resume, check) the run directory and take its lock. Nothing existing is overwritten.
    create=False only checks (nothing is written, no lock taken), so a bad --out fails before any model loads;
    create=True locks first and checks again under the lock, so two starts on one --out cannot both pass."""
    run = cfg.run_dir
    recipe_file = run / "recipe.yaml"
    if resume:
        if not recipe_file.exists():
            raise UserError(f"--resume: {run} holds no run (no recipe.yaml); drop --resume to start one there")
        _check_same_recipe(cfg, load_recipe(raw=read_yaml_mapping(recipe_file)), run)
        _check_writable(cfg)
        if create:
            lock_run_dir(run)
        return run
    _check_new(run)
    _check_writable(cfg)
    if not create:
        return run
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{run}: cannot create the run directory ({exc.strerror}); choose another --out") from None
    lock_run_dir(run)
    try:
        _check_new(run)
        write_text_atomic(recipe_file, dump_recipe(cfg))
        _record_prompts(cfg, run)
    except BaseException:
        unlock_run_dir(run)
        raise
    return run


def _check_new(run: Path) -> None:
    if run.exists() and not run.is_dir():
        raise UserError(f"{run}: exists and is not a directory; choose another --out")
    if run.exists() and not _is_empty(run):
        raise UserError(f"{run}: run directory exists and is not empty; pass --resume to continue it, "
                        f"or --out NEW_DIR for a new run")


def _check_writable(cfg: RunConfig) -> None:
    """The folders a run writes to (its own, train.text_cache) can be created and written: checked before any
    model loads, without creating anything."""
    folders = [("run directory", cfg.run_dir)] + ([("train.text_cache", Path(cfg.train.text_cache))]
                                          if cfg.train.text_cache else [])
    for key, folder in folders:
        near = folder
        while not near.exists() and near != near.parent:
            near = near.parent
        if near.exists() and not near.is_dir():
            raise UserError(f"{key}: {folder}: {near} is a file, not a folder; choose another path")
        if not os.access(near, os.W_OK | os.X_OK):
            raise UserError(f"{key}: {folder}: {near} is not writable; choose a folder you can write")


def _record_prompts(cfg: RunConfig, run: Path) -> None:
    """A copy of the prompt library file the run trains on (the bundled `shapesworld` library is rebuilt from
    its name instead): `asd export RUN` / `asd eval` read this, never a path the recipe names."""
    lib = cfg.prompts.library
    if lib is None or lib == BUNDLED or lib.startswith(BUNDLED + ":"):
        return
    write_text_atomic(run / PROMPTS_NAME, json.dumps(read_library(lib), ensure_ascii=False, indent=1))


PROMPTS_NAME = "prompts.json"


def _check_same_recipe(new: RunConfig, old: RunConfig, run: Path) -> None:
    """Resuming with a different recipe would silently change the experiment: only train.steps may grow."""
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
    return f"{path} ({shown(a)} → {shown(b)})"


def write_meta(run: Path, cfg: RunConfig, step: int, prompts: list[str], extra: dict | None = None) -> None:
    meta = {
        "asd_version": __version__, "torch_version": torch.__version__, "python": platform.python_version(),
        "name": cfg.name, "seed": cfg.seed, "step": step, "prompt_library_hash": prompts_hash(prompts),
        "num_prompts": len(prompts), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {}),
    }
    write_text_atomic(run / "meta.json", json.dumps(meta, indent=2))


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
                _quiet_tensorboard_thread()
                self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))
        return self._tb

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        try:
            tb = self._tensorboard()  # its constructor already writes (and may fail) from the writer thread
            if not tb:
                return
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    tb.add_scalar(key, value, step)
            tb.flush()
        except Exception as exc:  # the writer thread's own failure, re-raised here by TensorBoard
            self._tb = False  # metrics.jsonl is the log of record: the run goes on without event files
            nospace = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
            if nospace:
                raise OSError(exc.errno, os.strerror(exc.errno), str(self.path.parent / "tensorboard")) from None

            warnings.warn(f"TensorBoard logging stopped ({type(exc).__name__}); metrics.jsonl goes on",
                          stacklevel=2)


def _quiet_tensorboard_thread() -> None:
    """TensorBoard writes event files from a thread that, on a full disk, raises there (threading prints a
    traceback) and again in the next add_scalar/flush of the main thread, where MetricsLog handles it. Silence
    the thread's copy only; every other thread's exceptions are reported as before."""
    previous = threading.excepthook
    if getattr(previous, "_asd_quiet_tb", False):
        return

    def hook(args) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread":
            return
        previous(args)

    hook._asd_quiet_tb = True  # type: ignore[attr-defined]
    threading.excepthook = hook
