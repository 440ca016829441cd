"""Atomic writes: a file or a folder appears whole or not at all, and the previous one stays until it does.

Files: written under a temporary name in the destination's folder, fsynced, renamed over the destination
(os.replace), then the folder is fsynced so the rename itself survives a power cut. Folders: built in a
temporary sibling, every file and subfolder fsynced, renamed into place, the parent fsynced. No rename replaces a
non-empty folder, so an existing one is first renamed aside, and removed only once the new one is in place.

A failure (full disk, an exception in the writer) removes the temporary and leaves the old file or folder as it
was. A SIGKILL can leave a temporary behind: its name starts with a dot and never equals the destination's.
Standard library only (and the project's error type), so every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from asdcli.errors import UserError


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk. A file system that cannot fsync a
    folder (EINVAL: some network and FUSE mounts) is skipped: the data itself was already fsynced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then every folder bottom-up (so each folder's entries are durable)."""
    for folder, _, names in os.walk(root, topdown=False):
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(folder)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path` (same suffix, so writers pick the right format); when the block
    ends without error it is fsynced and renamed onto `path`, on any error it is removed.

    Missing parent folders are created. A folder at `path`, or a parent that is a file or not writable, is a
    UserError naming the path. The file gets the usual permissions (0666 less the umask).
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory: give a file name, e.g. {path / ('out' + path.suffix)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    except OSError as err:
        reason = err.strerror or err
        raise UserError(f"cannot write to {path.parent}: {reason}; choose a writable folder") from err
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (no newline added); returns the path."""
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> Path:
    """Write json.dumps(obj, **dumps_kwargs) and a final newline to `path` atomically, UTF-8; returns the path."""
    return write_text_atomic(path, json.dumps(obj, **dumps_kwargs) + "\n")


@contextlib.contextmanager
def atomic_folder(dest: str | os.PathLike, prefix: str | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside `dest` (named `prefix` + random, default ".DEST."); when the block
    ends without error its contents are fsynced and it replaces `dest` (created if missing); on any error it is
    removed and `dest` is left as it was. The folder gets the usual permissions (0777 less the umask)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{dest.name}.", dir=dest.parent))
    aside = tmp.with_name(tmp.name + ".old")  # shares the temporary's prefix: a caller's cleanup glob finds both
    try:
        yield tmp
        _fsync_tree(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
        if dest.exists() or dest.is_symlink():
            os.replace(dest, aside)
        os.replace(tmp, dest)
    except BaseException:
        if aside.exists() and not (dest.exists() or dest.is_symlink()):
            os.replace(aside, dest)  # the swap failed half-way: put the old folder back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(dest.parent)
    shutil.rmtree(aside, ignore_errors=True)


def write_folder_atomic(dest: str | os.PathLike, write: Callable[[Path], None], prefix: str | None = None) -> Path:
    """Build a folder with write(tmp) and publish it at `dest` atomically (see atomic_folder); returns `dest`."""
    with atomic_folder(dest, prefix) as tmp:
        write(tmp)
    return Path(dest)
