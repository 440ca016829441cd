"""The one training loop behind `asd train` (a prompt library) and `asd distill` (one prompt).

A step: sample P prompts and P·V cameras → generator state → render → prior.encode → score distillation +
scheduled regularisers → backward (× grad_accum) → average over ranks → NaN guard → optimiser step.
Every random number comes from one CPU torch.Generator per rank that checkpoints save, so a resumed run
replays the uninterrupted one exactly.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from asdcli.config import RunConfig
from asdcli.engine import checkpoint as ckpt_io
from asdcli.engine import distributed as dist_
from asdcli.engine.components import build_train_parts, resolve_device
from asdcli.engine.host_memory import keep_freed_host_memory
from asdcli.engine.optim import build_optimizer
from asdcli.engine.rundir import MetricsLog, prepare_run_dir, unlock_run_dir, write_meta
from asdcli.engine.steps import StepRunner, read_logs
from asdcli.engine.validation import validate
from asdcli.errors import UserError
from asdcli.priors.perp_neg import VIEW_SUFFIXES
from asdcli.priors.text_cache import TextEmbeddingCache
from asdcli.progress import ProgressReport


class TrainingAborted(RuntimeError):
    """Too many non-finite steps in a row (exit code 1), or a stop request (SIGTERM/SIGINT: exit 128 + signal)
    after the checkpoint was written."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class TrainState:
    step: int = 0  # completed optimiser steps
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    history: dict = field(default_factory=dict)


@dataclass
class FitResult:
    run_dir: Path
    step: int
    steps_per_s: float
    nonfinite_total: int
    last_metrics: dict


def _rng_state(gen: torch.Generator, info: dist_.DistInfo) -> dict[str, torch.Tensor]:
    states = dist_.all_gather_tensor(gen.get_state(), info)
    out = {f"gen.rank{r}": s for r, s in enumerate(states)}
    out["torch_cpu"] = torch.get_rng_state()
    return out


def field_queries(cfg: RunConfig) -> int:
    """Field queries a training run makes: steps × prompts × views × pixels × samples per ray (at the largest
    render side its resolution schedule reaches; start and end, which bound every schedule but keyframes)."""
    r, steps = cfg.render, cfg.train.steps
    side = max(r.resolution.at(0, steps), r.resolution.at(steps, steps))
    per_step = r.prompts_per_step * r.views_per_prompt * side * side * (r.samples_per_ray + r.importance_samples)
    return int(steps * cfg.train.grad_accum * per_step)


class Trainer:
    def __init__(self, cfg: RunConfig, prompts: list[str], val_prompts: list[str], resume: bool = False,
                 quiet: bool = False):
        self.cfg, self.quiet = cfg, quiet
        self.device = resolve_device(cfg.train.device)
        keep_freed_host_memory()  # reuse host memory step after step (on a CPU it holds all the activations)
        self.dist = dist_.setup(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device(self.dist.device)
        self.all_prompts = prompts
        self.prompts = prompts[self.dist.rank::self.dist.world_size]  # this rank's shard
        if not self.prompts:
            raise UserError(f"prompts: {len(prompts)} prompt(s) cannot be shared by {self.dist.world_size} ranks")
        self.val_prompts = val_prompts[: cfg.prompts.num_val]
        if self.dist.is_main:  # check --out / --resume first, but create nothing until every part is built
            prepare_run_dir(cfg, resume, create=False)
        self.parts = build_train_parts(cfg, self.device)
        self.parts.generator.prepare_for_training(self.device, field_queries(cfg))
        dist_.broadcast_parameters([self.parts.generator, self.parts.background], self.dist)
        # Groups built at rate 1.0 carry each part's scale of its rate; every train step sets "lr" from the
        # schedule (kept out of the groups, which checkpoints save as JSON and a resume replaces).
        plan = ([(g, cfg.train.lr) for g in self.parts.generator.param_groups(1.0)]
                + [(g, cfg.train.lr_background) for g in self.parts.background.param_groups(1.0)])
        plan = [(g, sched) for g, sched in plan if g["params"]]  # as build_optimizer keeps them
        self.lr_plan = [(g["lr"], sched) for g, sched in plan]
        groups = [g for g, _ in plan]
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = build_optimizer(cfg.train, groups)
        self.run_dir = cfg.run_dir
        # fp16 autocast needs loss scaling; bf16 and fp32 do not (the scaler is then a no-op).
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and cfg.train.precision == "fp16")
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.dist.rank + 1)
        self.state = TrainState()
        if cfg.train.text_cache:
            attach_text_cache(self.parts.prior, cfg.train.text_cache, prompts, self.dist, quiet)
        self.text = self.parts.prior.encode_text  # the text encoder keeps a bounded LRU of embeddings
        self.steps = StepRunner(cfg, self.parts, self.text, self.device)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.dist.is_main)
        self._stop_signal: int | None = None
        if resume and ckpt_io.any_checkpoint(self.run_dir / "checkpoints"):  # none (killed early): step 0
            self._load(ckpt_io.resolve_checkpoint(self.run_dir))
        self._created_run_dir = self.dist.is_main and not resume and not self.run_dir.exists()
        if self.dist.is_main:
            prepare_run_dir(cfg, resume)
        dist_.barrier(self.dist)

    # ------------------------------------------------------------------------------------------ state
    def _load(self, ckpt: Path) -> None:
        ckpt_io.load_weights_strict(self.parts.generator, ckpt_io.load_part(ckpt, "generator", required=True),
                                    "generator", ckpt)
        ckpt_io.load_weights_strict(self.parts.background, ckpt_io.load_part(ckpt, "background"),
                                    "background", ckpt)
        loss_sd = ckpt_io.load_part(ckpt, "loss")
        if loss_sd or self.parts.loss.state_dict():
            ckpt_io.load_weights_strict(self.parts.loss, loss_sd, "loss", ckpt)
        ckpt_io.load_optimizer_into(self.optimizer, ckpt)
        loss_opt = ckpt_io.load_optimizer(ckpt, "loss_optimizer")
        if loss_opt is not None:
            self.parts.loss.load_optimizer_state_dict(loss_opt)
        gen_state, cpu_state = ckpt_io.load_rng(ckpt, self.dist.rank)
        self.gen.set_state(gen_state)
        torch.set_rng_state(cpu_state)
        st = ckpt_io.load_state(ckpt)
        if not self.quiet and self.dist.is_main:
            print(f"resuming from {ckpt} (step {st['step']})", file=sys.stderr)
        self.state = TrainState(step=st["step"], nonfinite_in_a_row=st.get("nonfinite_in_a_row", 0),
                                nonfinite_total=st.get("nonfinite_total", 0))

    def save_checkpoint(self) -> Path | None:
        rng = _rng_state(self.gen, self.dist)  # collective: every rank takes part
        if not self.dist.is_main:
            return None
        parts = {"generator": self.parts.generator.state_dict(), "background": self.parts.background.state_dict(),
                 "loss": self.parts.loss.state_dict()}
        state = {"nonfinite_in_a_row": self.state.nonfinite_in_a_row,
                 "nonfinite_total": self.state.nonfinite_total, "world_size": self.dist.world_size}
        optimizers = {"optimizer": self.optimizer.state_dict()}
        loss_opt = self.parts.loss.optimizer_state_dict()
        if loss_opt:  # VSD's LoRA has its own optimizer
            optimizers["loss_optimizer"] = loss_opt
        path = ckpt_io.save_checkpoint(self.run_dir / "checkpoints", self.state.step, parts, optimizers, rng,
                                       state, self.cfg.train.keep_last)
        write_meta(self.run_dir, self.cfg, self.state.step, self.all_prompts)
        return path

    # ------------------------------------------------------------------------------------------- loop
    def train_step(self) -> dict[str, float]:
        """One optimiser step (grad_accum micro-steps). A non-finite loss or gradient skips the update.
        Returns the step's logs: device values as 0-d tensors (`read_logs` turns them into floats)."""
        self.optimizer.zero_grad(set_to_none=True)
        for group, (scale, sched) in zip(self.optimizer.param_groups, self.lr_plan, strict=True):
            group["lr"] = scale * sched.at(self.state.step, self.cfg.train.steps)  # a resume's too
        accum, logs = self.cfg.train.grad_accum, []
        for _ in range(accum):
            micro = self.steps(self.prompts, self.state.step, self.gen)
            self.scaler.scale(micro.loss / accum).backward()
            logs.append(micro.logs)
        dist_.average_gradients(self.params, self.dist)
        self.scaler.unscale_(self.optimizer)
        loss_finite, grads_finite = self._finite(logs)
        finite = loss_finite and grads_finite
        skipped = dist_.any_flag(not finite, self.dist)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.state.nonfinite_total += 1
            # fp16 overflow with a finite loss is the grad scaler calibrating: it lowers the scale, no abort.
            overflow = self.scaler.is_enabled() and not dist_.any_flag(not loss_finite, self.dist)
            self.state.nonfinite_in_a_row += 0 if overflow else 1
            if self.state.nonfinite_in_a_row >= self.cfg.train.max_nonfinite:
                raise TrainingAborted(
                    f"{self.state.nonfinite_in_a_row} non-finite steps in a row at step {self.state.step}; "
                    f"the last finite checkpoint is kept. Lower train.lr or enable loss.grad_clip")
        else:
            self.scaler.step(self.optimizer)
            self.state.nonfinite_in_a_row = 0
        self.scaler.update()
        merged = {k: sum(m[k] for m in logs) / len(logs) for k in logs[0]}
        merged.update(step=self.state.step, skipped=int(skipped), nonfinite_total=self.state.nonfinite_total,
                      lr=self.cfg.train.lr.at(self.state.step, self.cfg.train.steps))  # the generator's base rate
        self.state.step += 1
        return merged

    def _finite(self, logs: list[dict]) -> tuple[bool, bool]:
        """(every micro-step's loss is finite, every gradient is finite), computed on the device and read in one
        transfer: the step's only host sync (the skip has to be decided before the optimiser runs)."""
        dev = self.device
        losses = torch.stack([torch.as_tensor(m["loss"], dtype=torch.float32, device=dev).reshape(())
                              for m in logs])
        grads = [torch.isfinite(p.grad).all() for p in self.params if p.grad is not None]
        grads_ok = torch.stack(grads).all() if grads else torch.ones((), dtype=torch.bool, device=dev)
        loss_ok, grads_ok = torch.stack([torch.isfinite(losses).all(), grads_ok.to(dev)]).tolist()
        return bool(loss_ok), bool(grads_ok)

    def fit(self) -> FitResult:
        try:
            return self._fit()
        except BaseException:
            # A run folder this call created that failed before its first checkpoint holds nothing to resume:
            # remove it (a folder the user had, even empty, is kept; a stop signal writes a checkpoint first).
            if self._created_run_dir and not ckpt_io.any_checkpoint(self.run_dir / "checkpoints"):
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        finally:
            unlock_run_dir(self.run_dir)

    def _fit(self) -> FitResult:
        cfg, total = self.cfg, self.cfg.train.steps
        # SIGTERM and SIGINT (Ctrl-C) both finish the step, write a checkpoint and exit 128 + signal; a second
        # Ctrl-C while that happens stops at once (KeyboardInterrupt), the last complete checkpoint kept.
        old_handlers = {sig: signal.signal(sig, self._on_stop_signal) for sig in _STOP_SIGNALS} \
            if _main_thread() else {}
        t0, done0, last, shown_loss = time.perf_counter(), self.state.step, {}, None
        try:
            with _progress(self.quiet or not self.dist.is_main, total, self.state.step) as bar:
                while self.state.step < total:
                    last = self.train_step()
                    rate = (self.state.step - done0) / max(time.perf_counter() - t0, 1e-9)
                    # Logged values are read from the device only on logged steps (and once for the bar).
                    logged = self.state.step % cfg.train.log_every == 0 or self.state.step == total
                    if logged or shown_loss is None:
                        last = read_logs(last)
                        shown_loss = last["loss"]
                    bar(self.state.step, loss=shown_loss)
                    if logged:
                        self.metrics.write({**last, "steps_per_s": rate, "time": time.time()})
                    self._after_step(total)
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        rate = (self.state.step - done0) / max(time.perf_counter() - t0, 1e-9)
        dist_.shutdown(self.dist)
        return FitResult(self.run_dir, self.state.step, rate, self.state.nonfinite_total, read_logs(last))

    def _after_step(self, total: int) -> None:
        cfg, step = self.cfg.train, self.state.step
        stop = dist_.any_flag(self._stop_signal is not None, self.dist)
        if step % cfg.checkpoint_every == 0 or step == total or stop:
            self.save_checkpoint()
        if self.dist.is_main and ((cfg.val_every and step % cfg.val_every == 0) or step == total):
            validate(self, step)
        if stop:
            raise TrainingAborted(f"stopped by signal {self._stop_signal} at step {step}; checkpoint written; "
                                  f"continue with --resume", exit_code=128 + int(self._stop_signal or 15))

    def _on_stop_signal(self, signum, frame) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self._stop_signal = signum


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def attach_text_cache(prior, root: str, prompts: list[str], info: dist_.DistInfo, quiet: bool) -> None:
    """Build (rank-sharded, resumable) and attach the on-disk text-embedding cache for `prompts` with every
    view suffix and the negative prompt, so steps read embeddings instead of running the text encoder."""
    encoder = prior.text
    texts = list(prompts) + [prior.negative_prompt]
    suffixes = ("",) + (VIEW_SUFFIXES if prior.view_dependent else ())
    cache = TextEmbeddingCache(root, encoder.encoder_id)
    cache.build(texts, encoder.encode_uncached, rank=info.rank, world_size=info.world_size, suffixes=suffixes,
                progress=not quiet and info.is_main)
    dist_.barrier(info)
    if info.is_main:
        cache.finalize()
    dist_.barrier(info)
    encoder.attach_disk_cache(TextEmbeddingCache(root, encoder.encoder_id), suffixes)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _progress(quiet: bool, total: int, start: int):
    """A rich bar on a terminal, plain lines in a log, nothing with --quiet (asdcli.progress)."""
    return ProgressReport("train", total, start=start, quiet=quiet, unit="step")


def fit(cfg: RunConfig, prompts: list[str], val_prompts: list[str], resume: bool = False,
        quiet: bool = False) -> FitResult:
    """Train `cfg` on `prompts` (this is what `asd train` and `asd distill` call)."""
    return Trainer(cfg, prompts, val_prompts, resume=resume, quiet=quiet).fit()
