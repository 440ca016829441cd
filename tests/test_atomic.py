"""asdcli.atomic: a file or folder is replaced whole or not at all; a failure or a kill mid-write keeps the old one."""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from asdcli import atomic
from asdcli.atomic import (
    atomic_folder,
    atomic_output,
    write_bytes_atomic,
    write_folder_atomic,
    write_json_atomic,
    write_text_atomic,
)
from asdcli.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fsynced(monkeypatch):
    """The paths os.fsync is called on (read from /proc/self/fd), while the real fsync still runs."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the fsynced descriptors")
    seen: list[str] = []
    real = os.fsync

    def record(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return seen


def test_file_write_replaces_whole_and_is_fsynced(tmp_path, fsynced):
    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp.name.startswith(".")
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # nothing visible until the block ends
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.json"]
    assert (target.stat().st_mode & 0o777) == 0o666 & ~atomic._umask()
    # the data was fsynced under its temporary name (before the rename), then the folder that holds the rename
    assert any(Path(p).parent == tmp_path and Path(p).name.startswith(".out.") for p in fsynced)
    assert fsynced[-1] == str(tmp_path)


def test_bytes_text_json_round_trip(tmp_path):
    assert write_bytes_atomic(tmp_path / "a" / "b.bin", b"\x00\xff").read_bytes() == b"\x00\xff"  # parents made
    assert write_text_atomic(tmp_path / "t.txt", "é\n").read_bytes() == "é\n".encode()
    obj = {"prompt": "a red cube", "n": [1, 2.5]}
    path = write_json_atomic(tmp_path / "o.json", obj, indent=2, ensure_ascii=False)
    assert path.read_text(encoding="utf-8") == json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    with pytest.raises(ValueError):  # a value json refuses: nothing is written, no temporary is left
        write_json_atomic(tmp_path / "nan.json", {"x": float("nan")}, allow_nan=False)
    assert sorted(os.listdir(tmp_path)) == ["a", "o.json", "t.txt"]


def test_a_failure_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.png"]

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)  # the data did not reach the disk: the rename must not happen
    with pytest.raises(OSError, match="No space left"):
        write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.png"]


def test_a_killed_writer_leaves_the_old_file(tmp_path):
    """SIGKILL while the new bytes sit in the temporary: the destination still holds the old bytes."""
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    code = ("import sys, time\nfrom asdcli.atomic import atomic_output\n"
            f"with atomic_output({str(target)!r}) as tmp:\n"
            "    tmp.write_bytes(b'new' * 1000)\n    print('written', flush=True)\n    time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert target.read_bytes() == b"old"
    left = sorted(set(os.listdir(tmp_path)) - {"out.bin"})
    assert len(left) == 1 and left[0].startswith(".out.")  # the temporary: a hidden name, never the target's


def test_errors_name_the_path(tmp_path):
    (tmp_path / "dir.glb").mkdir()
    with pytest.raises(UserError, match="is a directory"):
        write_bytes_atomic(tmp_path / "dir.glb", b"x")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="cannot write to .*afile.*choose a writable folder"):
        write_bytes_atomic(tmp_path / "afile" / "x.glb", b"x")


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_folder_publish_replaces_the_old_folder_whole(tmp_path, fsynced):
    dest = tmp_path / "prior"
    (dest / "unet").mkdir(parents=True)
    (dest / "unet" / "old.bin").write_bytes(b"old")
    (dest / "keep_me_not.txt").write_text("old")

    def write(tmp: Path) -> None:
        assert tmp.parent == tmp_path and tmp.name.startswith(".prior.")
        (tmp / "unet").mkdir()
        (tmp / "unet" / "new.bin").write_bytes(b"new")
        (tmp / "info.json").write_text("{}")
        assert _tree(dest) == {"unet/old.bin": b"old", "keep_me_not.txt": b"old"}  # unchanged until published

    assert write_folder_atomic(dest, write) == dest
    assert _tree(dest) == {"unet/new.bin": b"new", "info.json": b"{}"}
    assert os.listdir(tmp_path) == ["prior"]  # neither the temporary nor the old folder is left
    assert (dest.stat().st_mode & 0o777) == 0o777 & ~atomic._umask()
    names = {Path(p).name for p in fsynced}
    assert {"new.bin", "info.json", "unet"} <= names and fsynced[-1] == str(tmp_path)


def test_folder_publish_failure_keeps_the_old_folder(tmp_path, monkeypatch):
    dest = tmp_path / "step_000010"
    dest.mkdir()
    (dest / "state.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(dest, prefix=".tmp_step_000010_") as tmp:
            assert tmp.name.startswith(".tmp_step_000010_")  # checkpoint.prune() finds a killed one's by prefix
            (tmp / "state.json").write_text("new")
            raise RuntimeError("full disk")
    assert _tree(dest) == {"state.json": b"old"} and os.listdir(tmp_path) == ["step_000010"]

    real, calls = os.replace, []

    def second_rename_fails(src, dst):  # the old folder was moved aside, then the swap itself fails
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError):
        write_folder_atomic(dest, lambda tmp: (tmp / "state.json").write_text("new"))
    assert _tree(dest) == {"state.json": b"old"} and os.listdir(tmp_path) == ["step_000010"]  # put back
