"""Runs that are copied, shared, run twice at once, interrupted or exported twice (issue 34), through the real
CLI: `last` as a link, a copied directory or a pointer file; one lock per run directory; Ctrl-C = SIGTERM;
export names and index.json that never label a file with another prompt; a full disk met by the real
safetensors writer and TensorBoard thread on a small tmpfs (root only, else skipped)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from asdcli.cli import app
from asdcli.engine import checkpoint as ckpt_io

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny_cpu.yaml"
SMALL = ["render.resolution=8", "render.samples_per_ray=8", "prompts.num_val=1", "train.val_views=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
       "PYTHONPATH": str(ROOT)}
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], prog_name="asd")


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    """A tiny run with two checkpoints (steps 1 and 2); `last` → step_000002 (the shared `tiny_run` has one)."""
    run = tmp_path_factory.mktemp("runs") / "run"
    res = invoke("train", TINY, *SMALL, "train.checkpoint_every=1", "--steps", "2", "--out", run, "--quiet")
    assert res.exit_code == 0, res.output
    return run


def _step(run: Path) -> int:
    return ckpt_io.load_state(ckpt_io.resolve_checkpoint(run, announce=False))["step"]


# ----------------------------------------------------------------------------------- copied runs and `last`
def test_run_copied_with_links_followed_resumes_and_repoints_last(run2, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run2, copy, symlinks=False)  # what cp -rL / scp -r / rsync -L do
    last = copy / "checkpoints" / "last"
    assert last.is_dir() and not last.is_symlink()
    res = invoke("train", TINY, *SMALL, "train.checkpoint_every=1", "--steps", "3", "--resume", "--out", copy)
    assert res.exit_code == 0, res.output  # no IsADirectoryError when `last` is swapped
    assert "resuming from" in res.stderr and "step_000002" in res.stderr
    assert last.is_symlink() and os.readlink(last) == "step_000003"


@pytest.mark.parametrize("kind", ["stale-copy", "pointer-file", "pointer-to-older"])
def test_newest_complete_checkpoint_wins_over_last_and_is_named(run2, tmp_path, kind):
    copy = tmp_path / "copy"
    shutil.copytree(run2, copy, symlinks=True)
    ckpts = copy / "checkpoints"
    (ckpts / "last").unlink()
    if kind == "stale-copy":
        shutil.copytree(ckpts / "step_000001", ckpts / "last")
    else:
        (ckpts / "last").write_text("step_000002\n" if kind == "pointer-file" else "step_000001\n")
    res = invoke("generate", "a red cube", "--out", tmp_path / "a.glb", "--checkpoint", copy, "--resolution", "8")
    assert res.exit_code == 0, res.output
    assert _step(copy) == 2
    notes = [ln for ln in _lines(res.stderr) if ln.startswith("note:")]
    if kind == "pointer-file":
        assert notes == []  # `last` names the newest: nothing to say
    else:
        assert len(notes) == 1 and "step_000002 (step 2)" in notes[0] and "checkpoints/last" in notes[0]
    res = invoke("train", TINY, *SMALL, "train.checkpoint_every=1", "--steps", "3", "--resume", "--out", copy,
                 "--quiet")
    assert res.exit_code == 0, res.output
    assert os.readlink(ckpts / "last") == "step_000003" and _step(copy) == 3


def test_damaged_newest_step_is_skipped_and_named(run2, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run2, copy, symlinks=True)
    (copy / "checkpoints" / "step_000002" / "state.json").write_text('{"step": "2"}')
    res = invoke("eval", "--checkpoint", copy, "--views", "1", "--resolution", "16", "--quiet")
    assert res.exit_code == 0, res.output
    note = next(ln for ln in _lines(res.stderr) if ln.startswith("note:"))
    assert "step_000001 (step 1)" in note and "skipped step_000002" in note


# ------------------------------------------------------------------------------------------------ locking
_HOLDER = ("import sys, time; from pathlib import Path; from asdcli.engine.rundir import lock_run_dir; "
           "p = Path(sys.argv[1]); p.mkdir(parents=True, exist_ok=True); lock_run_dir(p); print('locked', "
           "flush=True); time.sleep(300)")


def _hold_lock(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize("resume", [False, True])
def test_second_train_on_a_locked_run_exits_2_naming_the_holder(run2, tmp_path, resume):
    run = tmp_path / "run"
    if resume:
        shutil.copytree(run2, run, symlinks=True)
    holder = _hold_lock(run)
    try:
        before = sorted(p.name for p in run.rglob("*"))
        res = invoke("train", TINY, *SMALL, "train.checkpoint_every=1", "--steps", "3", "--out", run, "--quiet",
                     *(["--resume"] if resume else []))
        lines = _lines(res.stderr)
        assert res.exit_code == 2 and len(lines) == 1, res.output
        assert f"pid {holder.pid}" in lines[0] and "in use by another asd run" in lines[0]
        assert sorted(p.name for p in run.rglob("*")) == before  # nothing deleted or added
    finally:
        holder.kill()
        holder.wait()
    res = invoke("train", TINY, *SMALL, "train.checkpoint_every=1", "--steps", "3", "--out", run, "--quiet",
                 *(["--resume"] if resume else []))
    assert res.exit_code == 0, res.output  # the kernel dropped the lock with its holder: the stale file is reused


@pytest.mark.slow
def test_two_trains_started_together_on_one_out(tmp_path):
    """Real concurrency: one run trains to the end, the other exits 2 (in use, or not empty), and the survivor's
    checkpoint is intact."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "asdcli", "train", str(TINY), *SMALL, "--steps", "3", "--out", str(run), "--quiet"]
    procs = [subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    assert _step(run) == 3


# ------------------------------------------------------------------------------------------------ signals
def test_ctrl_c_writes_a_checkpoint_and_exits_130(tmp_path):
    run = tmp_path / "r"
    cmd = [sys.executable, "-m", "asdcli", "train", str(TINY), *SMALL, "train.checkpoint_every=1000", "--steps",
           "500", "--out", str(run), "--quiet"]
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (run / "metrics.jsonl").exists():  # log_every 10: ten steps done, no checkpoint yet
        assert proc.poll() is None and time.time() - t0 < 180, "training did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "checkpoint written" in err and "Traceback" not in err
    assert 10 <= _step(run) < 500  # before the first scheduled checkpoint: the run folder is kept, with one


def test_failure_before_the_first_checkpoint_keeps_a_folder_the_user_had(tmp_path, monkeypatch):
    from asdcli.engine.steps import StepRunner

    def broken(self, *args, **kwargs):
        raise RuntimeError("simulated crash in the first step")

    monkeypatch.setattr(StepRunner, "__call__", broken)
    mine = tmp_path / "mine"
    mine.mkdir()
    res = invoke("train", TINY, *SMALL, "--steps", "2", "--out", mine, "--quiet")
    assert res.exit_code == 1 and "simulated crash" in res.stderr
    assert mine.is_dir()  # the (empty) folder the user made stays; a folder the run made is removed (see
    # test_reliability.test_failure_before_the_first_checkpoint_leaves_no_run_dir)


# ------------------------------------------------------------------------------------------------- export
def _export(run: Path, prompts: Path, out: Path, *extra):
    return invoke("export", run, "--prompts", prompts, "--out", out, "--resolution", "8", "--quiet", *extra)


def test_export_names_are_unique_per_prompt_across_batches_and_index_is_merged(run2, tmp_path):
    out, p1, p2 = tmp_path / "out", tmp_path / "p1.txt", tmp_path / "p2.txt"
    p1.write_text("a red cube\na blue sphere\n")
    p2.write_text("a red cube.\n")
    assert _export(run2, p1, out).exit_code == 0
    first = (out / "a_red_cube.glb").read_bytes()
    res = _export(run2, p2, out)
    assert res.exit_code == 0 and "1 asset(s)" in res.stdout, res.output  # not skipped as "existing"
    index = json.loads((out / "index.json").read_text())
    assert sorted(index.values()) == ["a blue sphere", "a red cube", "a red cube."]  # merged, not replaced
    assert index["a_red_cube.glb"] == "a red cube" and (out / "a_red_cube.glb").read_bytes() == first
    other = next(name for name, prompt in index.items() if prompt == "a red cube.")
    assert other != "a_red_cube.glb" and (out / other).is_file()
    res = _export(run2, p1, out)  # a rerun reuses the recorded files
    assert res.exit_code == 0 and "2 existing skipped" in res.stdout
    assert json.loads((out / "index.json").read_text()) == index


def test_export_reuses_a_file_only_for_the_same_checkpoint(run2, tmp_path):
    out, prompts = tmp_path / "out", tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    older = run2 / "checkpoints" / "step_000001"
    assert _export(older, prompts, out).exit_code == 0
    old_bytes = (out / "a_red_cube.glb").read_bytes()
    res = _export(run2, prompts, out)  # another checkpoint: a new file, the old one kept and still labelled
    assert res.exit_code == 0 and "1 asset(s)" in res.stdout, res.output
    index = json.loads((out / "index.json").read_text())
    assert len(index) == 2 and set(index.values()) == {"a red cube"}
    assert (out / "a_red_cube.glb").read_bytes() == old_bytes
    sources = json.loads((out / "index.checkpoints.json").read_text())
    assert len(set(sources.values())) == 2


def test_export_never_reads_a_file_the_run_names_but_uses_its_recorded_prompts(tmp_path):
    library = tmp_path / "lib.json"
    library.write_text(json.dumps({"train": ["a red cube"], "test": ["a blue sphere"]}))
    run = tmp_path / "run"
    res = invoke("train", TINY, *SMALL, f"prompts.library={library}", "--steps", "1", "--out", run, "--quiet")
    assert res.exit_code == 0, res.output
    library.write_text(json.dumps({"test": ["a secret line of another file"]}))  # the recipe's path now leaks
    res = invoke("export", run, "--out", tmp_path / "out", "--resolution", "8", "--quiet")
    assert res.exit_code == 0, res.output
    assert list(json.loads((tmp_path / "out" / "index.json").read_text()).values()) == ["a blue sphere"]


def test_byte_order_marks_are_dropped(run2, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"\xef\xbb\xbf" + TINY.read_bytes())
    assert invoke("train", recipe, "--dry-run").exit_code == 0
    prompts = tmp_path / "p.txt"
    prompts.write_bytes(b"\xef\xbb\xbfa red cube\n")
    assert _export(run2, prompts, tmp_path / "out").exit_code == 0
    assert json.loads((tmp_path / "out" / "index.json").read_text()) == {"a_red_cube.glb": "a red cube"}


# ------------------------------------------------------------------------------- real full disk (tmpfs)
@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MiB tmpfs (root only): a disk that really fills up, for the real writers."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount -t tmpfs failed (no CAP_SYS_ADMIN in this container)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int) -> None:
    """Write a filler file until only about `leave` bytes are free."""
    free = shutil.disk_usage(mnt).free - leave
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while free > 0:
            free -= os.write(fd, b"\0" * min(free, 1 << 16))
    except OSError:  # full already
        pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("leave", [0, 256 << 10], ids=["no-space-at-all", "room-for-logs-not-weights"])
def test_full_disk_with_the_real_writers(run2, tmpfs, leave):
    """0 bytes free: the TensorBoard thread fails first; 256 KiB: safetensors fails writing the weights. Both:
    exit 1, the designed one line, no traceback from any thread, the earlier checkpoints untouched."""
    run = tmpfs / "run"
    shutil.copytree(run2, run, symlinks=True)
    shutil.rmtree(run / "tensorboard", ignore_errors=True)  # the resumed run opens a new event file
    before = {p.name: (p / "generator.safetensors").read_bytes() for p in ckpt_io.step_dirs(run / "checkpoints")}
    _fill(tmpfs, leave)
    cmd = [sys.executable, "-m", "asdcli", "train", str(TINY), *SMALL, "train.checkpoint_every=1", "--steps", "3",
           "--resume", "--out", str(run), "--quiet"]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    lines = _lines(proc.stderr)
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "no space left" in lines[0], lines
    assert ("tensorboard" if leave == 0 else "generator.safetensors") in lines[0]  # the writer that met it
    assert "Traceback" not in proc.stderr + proc.stdout and "SafetensorError" not in proc.stderr
    after = {p.name: (p / "generator.safetensors").read_bytes() for p in ckpt_io.step_dirs(run / "checkpoints")}
    assert after == before and os.readlink(run / "checkpoints" / "last") == "step_000002"
    assert not list((run / "checkpoints").glob(".tmp*"))  # no half-written checkpoint left


def test_export_to_a_read_only_folder_exits_2(run2, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    mounted = False
    if os.geteuid() == 0:  # root writes through chmod: a read-only mount is the honest read-only folder
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(out)],
                                 capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("mount -t tmpfs failed (no CAP_SYS_ADMIN in this container)")
    else:
        out.chmod(0o555)
    try:
        prompts = tmp_path / "p.txt"
        prompts.write_text("a red cube\n")
        res = _export(run2, prompts, out)
        lines = _lines(res.stderr)
        assert res.exit_code == 2 and len(lines) == 1 and "not writable" in lines[0], res.output
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(out)], check=False)
        else:
            out.chmod(0o755)


def test_a_copied_last_that_is_the_only_copy_of_its_step_is_kept(run2, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run2, copy, symlinks=False)
    ckpts = copy / "checkpoints"
    shutil.rmtree(ckpts / "step_000002")  # `last` (a directory) now holds step 2's only copy
    res = invoke("train", TINY, *SMALL, "train.checkpoint_every=1", "--steps", "3", "--resume",
                 "--out", copy, "--quiet")
    assert res.exit_code == 0, res.output
    assert [p.name for p in ckpt_io.step_dirs(ckpts)] == ["step_000001", "step_000002", "step_000003"]
    assert (ckpts / "step_000002" / "generator.safetensors").read_bytes() == \
        (run2 / "checkpoints" / "step_000002" / "generator.safetensors").read_bytes()
