"""The training engine: exact resume after SIGKILL, SIGTERM checkpoint, atomic checkpoints, NaN guard,
2-process gloo training, validation media."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asdcli.engine import checkpoint as ckpt_io
from asdcli.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny_cpu.yaml"
SMALL = ["render.resolution=8", "render.samples_per_ray=8", "train.checkpoint_every=2", "train.keep_last=2",
         "prompts.num_val=1", "train.val_views=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train_cmd(out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "asdcli", "train", str(TINY), *SMALL, "--steps", str(steps), "--out", str(out),
            "--quiet", *extra]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last" / "generator.safetensors"))


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "process ended early"
        assert time.time() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.05)


def test_sigkill_then_resume_reproduces_uninterrupted_run(tmp_path):
    steps = 8
    subprocess.run(_train_cmd(tmp_path / "a", steps), env=ENV, check=True, capture_output=True)
    proc = subprocess.Popen(_train_cmd(tmp_path / "b", steps), env=ENV, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "b" / "checkpoints" / "step_000004" / "state.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = ckpt_io.load_state(ckpt_io.resolve_checkpoint(tmp_path / "b"))["step"]
    assert 4 <= done < steps
    subprocess.run(_train_cmd(tmp_path / "b", steps, "--resume"), env=ENV, check=True, capture_output=True)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sigterm_writes_checkpoint_and_exits_143(tmp_path):
    proc = subprocess.Popen(_train_cmd(tmp_path / "r", 200, "train.checkpoint_every=1000"), env=ENV,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "r" / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "checkpoint written" in err and "--resume" in err
    step = ckpt_io.load_state(ckpt_io.resolve_checkpoint(tmp_path / "r"))["step"]
    assert 10 <= step < 200  # log_every is 10: at least one logged step happened


def _tiny_trainer(tmp_path, *overrides):
    from asdcli.engine.trainer import Trainer

    cfg = load_recipe(TINY, [*SMALL, *overrides], {"output.dir": str(tmp_path / "run"), "train.steps": 4})
    return Trainer(cfg, list(cfg.prompts.items), list(cfg.prompts.items), quiet=True)


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    trainer = _tiny_trainer(tmp_path)
    trainer.train_step()
    first = trainer.save_checkpoint()
    trainer.train_step()
    calls = {"n": 0}
    real = ckpt_io.save_file

    def failing(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # die in the middle of writing the checkpoint
            raise OSError(28, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt_io, "save_file", failing)
    with pytest.raises(OSError):
        trainer.save_checkpoint()
    root = trainer.run_dir / "checkpoints"
    assert ckpt_io.resolve_checkpoint(trainer.run_dir) == first.resolve()
    assert not (root / "step_000002").exists()
    monkeypatch.setattr(ckpt_io, "save_file", real)
    trainer.train_step()
    third = trainer.save_checkpoint()  # the next write cleans the debris of the failed one
    assert third.name == "step_000003" and not list(root.glob(".tmp_step_*"))


def test_keep_last_prunes_old_checkpoints(tmp_path):
    trainer = _tiny_trainer(tmp_path, "train.keep_last=2")
    for _ in range(4):
        trainer.train_step()
        trainer.save_checkpoint()
    names = [p.name for p in ckpt_io.step_dirs(trainer.run_dir / "checkpoints")]
    assert names == ["step_000003", "step_000004"]
    assert os.readlink(trainer.run_dir / "checkpoints" / "last") == "step_000004"


def test_nan_steps_are_skipped_then_abort(tmp_path, monkeypatch):
    from asdcli.engine.trainer import TrainingAborted

    trainer = _tiny_trainer(tmp_path, "train.max_nonfinite=3")
    before = {k: v.clone() for k, v in trainer.parts.generator.state_dict().items()}
    real_call = trainer.steps.__call__

    def poisoned(prompts, step, gen):
        micro = real_call(prompts, step, gen)
        micro.loss = micro.loss * float("nan")
        micro.logs["loss"] = float("nan")
        return micro

    monkeypatch.setattr(trainer, "steps", poisoned)
    for _ in range(2):
        logs = trainer.train_step()
        assert logs["skipped"] == 1
    after = trainer.parts.generator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # skipped steps change nothing
    assert trainer.state.nonfinite_total == 2
    with pytest.raises(TrainingAborted, match="3 non-finite steps in a row"):
        trainer.train_step()


def test_non_finite_checkpoint_is_never_written(tmp_path):
    trainer = _tiny_trainer(tmp_path)
    trainer.train_step()
    with torch.no_grad():
        next(trainer.parts.generator.parameters()).fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="non-finite checkpoint"):
        trainer.save_checkpoint()
    assert not (trainer.run_dir / "checkpoints" / "step_000001").exists()


def _rank_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from asdcli.engine.trainer import Trainer

    cfg = load_recipe(TINY, SMALL, {"output.dir": out_dir, "train.steps": 2, "render.prompts_per_step": 1})
    trainer = Trainer(cfg, list(cfg.prompts.items), list(cfg.prompts.items), quiet=True)
    for _ in range(2):
        trainer.train_step()
    flat = torch.cat([p.detach().reshape(-1) for p in trainer.parts.generator.parameters()])
    torch.save({"params": flat, "prompts": trainer.prompts}, Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_process_gloo_keeps_ranks_identical(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(r0["params"], r1["params"])
    assert set(r0["prompts"]).isdisjoint(r1["prompts"])
    assert sorted(r0["prompts"] + r1["prompts"]) == sorted(load_recipe(TINY).prompts.items)


def test_validation_media_readable(tmp_path):
    import imageio.v3 as iio

    from asdcli.engine.validation import validate

    trainer = _tiny_trainer(tmp_path)
    out = validate(trainer, 0)
    png = next(out.glob("*.png"))
    img = iio.imread(png)
    assert img.shape == (3 * 33 + 1, 2 * 33 + 1, 3)  # rows RGB/normal/opacity × 2 views of 32² (+1 px pad)
    video = next(p for p in out.iterdir() if p.suffix in (".mp4", ".gif"))
    frames = iio.imread(video, index=None)
    assert frames.shape[0] == 2  # one frame per validation view


def test_text_cache_serves_every_step_without_the_text_encoder(tmp_path, monkeypatch):
    trainer = _tiny_trainer(tmp_path, f"train.text_cache={tmp_path / 'cache'}")
    encoder = trainer.parts.prior.text
    encoder._cache.clear()  # drop in-memory entries so every lookup has to go to disk

    def no_encoder(*args, **kwargs):
        raise AssertionError("the text encoder ran although the disk cache holds every text")

    monkeypatch.setattr(encoder, "_run", no_encoder)
    logs = trainer.train_step()
    assert logs["skipped"] == 0 and logs["loss"] == logs["loss"]
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) >= 1


def test_tensorboard_events_mirror_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from asdcli.engine.rundir import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"step": 3, "loss": 0.5, "t": 400.0, "time": 1.0})
    log.write({"step": 4, "loss": 0.25, "t": 300.0, "time": 2.0})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(3, 0.5), (4, 0.25)]
    assert "time" not in events.Tags()["scalars"]


def test_lr_schedule_sets_every_step_and_survives_a_resume(tmp_path):
    sched = "train.lr={linear: {from: 0.004, to: 0.001, start: 1, end: 3}}"
    trainer = _tiny_trainer(tmp_path, sched, "train.lr_background=0.002")
    seen = []
    for _ in range(2):
        logs = trainer.train_step()
        seen.append(logs["lr"])
        trainer.save_checkpoint()
    assert seen == pytest.approx([0.004, 0.004])  # constant until `start`
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.004)
    cfg = load_recipe(TINY, [*SMALL, sched, "train.lr_background=0.002"],
                      {"output.dir": str(tmp_path / "run"), "train.steps": 4})
    from asdcli.engine.trainer import Trainer

    resumed = Trainer(cfg, list(cfg.prompts.items), list(cfg.prompts.items), resume=True, quiet=True)
    assert resumed.state.step == 2
    assert [resumed.train_step()["lr"] for _ in range(2)] == pytest.approx([0.0025, 0.001])  # step 2 is midway


def test_generator_parts_keep_their_scale_of_a_scheduled_lr(tmp_path):
    from asdcli.engine.trainer import Trainer

    cfg = load_recipe(ROOT / "recipes" / "sd_nerf.yaml",
                      ["prior={kind: tiny-random, seed: 0}", "render.resolution=8", "render.samples_per_ray=8",
                       "generator.grid={n_levels: 2, n_features_per_level: 2, log2_hashmap_size: 8, "
                       "base_resolution: 4, per_level_scale: 2.0}", "generator.mlp_hidden=8",
                       "prompts.library=null", "prompts.items=[a cube]", "prompts.num_val=1", "train.val_views=2",
                       "train.lr={piecewise: {0: 0.001, 1: 0.0005}}", "train.device=cpu"],
                      {"output.dir": str(tmp_path / "run"), "train.steps": 2})
    trainer = Trainer(cfg, ["a cube"], ["a cube"], quiet=True)
    rates = []
    for _ in range(2):
        trainer.train_step()
        rates.append({g["name"]: g["lr"] for g in trainer.optimizer.param_groups})
    scale = cfg.generator.encoding_lr_scale
    assert rates[0]["encoding"] == pytest.approx(0.001 * scale) and rates[0]["generator"] == pytest.approx(0.001)
    assert rates[1]["encoding"] == pytest.approx(0.0005 * scale) and rates[1]["generator"] == pytest.approx(0.0005)
