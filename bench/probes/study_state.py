"""Compact, committable state of a method-study arm, so an arm can train across sittings (and machines).

A full checkpoint (RUN/checkpoints/step_N/) of the ShapesWorld generator is fp32 weights and Adam moments. The
compact copy under bench/study/ARM/state/ keeps the same files with every floating tensor of more than one
element stored as fp16 (weights, the loss's LoRA) or in MOMENTS_DTYPE (optimiser moments), and everything else
(RNG states, Adam's step counters, JSON) unchanged. `restore` writes it back as a normal fp32 checkpoint
through the engine's own `save_checkpoint`, so `fit(..., resume=True)` continues it; the rounding is the only
difference from an uninterrupted run (`drift` measures it).

Why bf16 and not fp16 for the moments: Adam's second moment v ≈ g² sits far below fp16's smallest normal
(6e-5) for most coordinates, and fp16 flushes the smallest to zero; a zero v turns the next step of that
coordinate into m / eps (eps 1e-8), a jump. bf16 has fp32's exponent range (8 significant bits).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from asdcli.engine import checkpoint as ckpt_io

WEIGHTS = ("generator", "background", "loss")  # module state_dicts (the loss holds VSD's LoRA)
OPTIMIZERS = ("optimizer", "loss_optimizer")  # NAME.safetensors + NAME.json
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
WEIGHTS_DTYPE, MOMENTS_DTYPE = "fp16", "bf16"


def _shrink(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors with more than one element → dtype; scalars (Adam's step) and integers unchanged."""
    return {k: v.to(dtype) if v.is_floating_point() and v.numel() > 1 else v for k, v in tensors.items()}


def _grow(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def export(step_dir: Path, run_dir: Path, dest: Path, weights: str = WEIGHTS_DTYPE,
           moments: str = MOMENTS_DTYPE) -> Path:
    """The checkpoint `step_dir` of `run_dir` → dest/ (replaced atomically: a temp folder renamed over it)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in WEIGHTS:
        if (step_dir / f"{name}.safetensors").is_file():
            save_file(_shrink(load_file(str(step_dir / f"{name}.safetensors")), DTYPES[weights]),
                      str(tmp / f"{name}.safetensors"))
    for name in OPTIMIZERS:
        if (step_dir / f"{name}.json").is_file():
            save_file(_shrink(load_file(str(step_dir / f"{name}.safetensors")), DTYPES[moments]),
                      str(tmp / f"{name}.safetensors"))
            shutil.copy2(step_dir / f"{name}.json", tmp / f"{name}.json")
    shutil.copy2(step_dir / "rng.safetensors", tmp / "rng.safetensors")
    state = json.loads((step_dir / "state.json").read_text())
    (tmp / "state.json").write_text(json.dumps({**state, "compact": {"weights": weights, "moments": moments}}))
    shutil.copy2(run_dir / "recipe.yaml", tmp / "recipe.yaml")
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def compact_step(dest: Path) -> int:
    """The step a compact state holds, or 0 when there is none."""
    return json.loads((dest / "state.json").read_text())["step"] if (dest / "state.json").is_file() else 0


def restore(src: Path, run_dir: Path, keep_last: int = 3) -> Path:
    """A compact state → run_dir (recipe.yaml + checkpoints/step_N/ in fp32), replacing what run_dir held.
    Returns the step directory."""
    state = json.loads((src / "state.json").read_text())
    step = state.pop("step")
    state.pop("compact", None)
    state.pop("write_s", None)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    shutil.copy2(src / "recipe.yaml", run_dir / "recipe.yaml")
    parts = {n: _grow(load_file(str(src / f"{n}.safetensors"))) for n in WEIGHTS
             if (src / f"{n}.safetensors").is_file()}
    optimizers = {n: ckpt_io.unflatten_optimizer(_grow(load_file(str(src / f"{n}.safetensors"))),
                                                 json.loads((src / f"{n}.json").read_text()))
                  for n in OPTIMIZERS if (src / f"{n}.json").is_file()}
    rng = load_file(str(src / "rng.safetensors"))
    return ckpt_io.save_checkpoint(run_dir / "checkpoints", step, parts, optimizers, rng, state, keep_last)


def snapshot_weights(step_dir: Path, dest: Path) -> Path:
    """The generator's weights alone in fp16 (about a quarter of a megabyte): for re-scoring a curve later."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(_shrink(load_file(str(step_dir / "generator.safetensors")), torch.float16), str(dest))
    return dest


def size_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


VARIANTS = (("fp16", "bf16"), ("fp16", "fp16"), ("fp32", "fp32"))  # (weights, moments); fp32 must be exact


def drift(cfg_at, prompts: list[str], before: int, after: int, root: Path, variants=VARIANTS,
          quiet: bool = True) -> dict:
    """Train `before + after` steps uninterrupted, and `before` steps → compact state → restore → `after` more,
    once per (weights, moments) dtype pair; compare each resumed generator with the uninterrupted one.

    cfg_at(steps, run_dir) → RunConfig. Per variant "W/M": `rel_to_update` = ‖θ_resumed − θ_straight‖ /
    ‖θ_straight − θ_before‖ (0 = identical; 1 = as far apart as the `after` steps moved the weights),
    `rel_to_weights` = the same difference / ‖θ_straight‖, `max_loss_diff` = the largest |Δ loss| over the
    logged steps after the round trip, `bytes` = the compact state's size."""
    from asdcli.engine.trainer import fit

    straight, split = root / "straight", root / "split"
    fit(cfg_at(before + after, straight), prompts, [], quiet=quiet)
    fit(cfg_at(before, split), prompts, [], quiet=quiet)
    mid = ckpt_io.resolve_checkpoint(split)
    theta0 = load_file(str(mid / "generator.safetensors"))
    out = {"before": before, "after": after, "checkpoint_bytes": size_bytes(mid), "variants": {}}
    for weights, moments in variants:
        label = f"{weights}/{moments}"
        state = export(mid, split, root / f"state_{weights}_{moments}", weights, moments)
        resumed = root / f"resumed_{weights}_{moments}"
        restore(state, resumed)
        fit(cfg_at(before + after, resumed), prompts, [], resume=True, quiet=quiet)
        out["variants"][label] = {**_rel_diff(straight, resumed, theta0),
                                  "max_loss_diff": _max_loss_diff(straight, resumed, before),
                                  "bytes": size_bytes(state)}
    return out


def _rel_diff(a: Path, b: Path, theta0: dict[str, torch.Tensor]) -> dict[str, float]:
    ta = load_file(str(ckpt_io.resolve_checkpoint(a) / "generator.safetensors"))
    tb = load_file(str(ckpt_io.resolve_checkpoint(b) / "generator.safetensors"))

    def norm(parts) -> float:
        return sum(float(x.double().pow(2).sum()) for x in parts) ** 0.5

    diff = norm(ta[k] - tb[k] for k in ta)
    return {"rel_to_update": diff / max(norm(ta[k] - theta0[k] for k in ta), 1e-30),
            "rel_to_weights": diff / max(norm(ta.values()), 1e-30)}


def _max_loss_diff(a: Path, b: Path, after_step: int) -> float:
    """Largest |loss difference| between the two runs' metrics.jsonl rows past `after_step`."""
    def losses(run: Path) -> dict[int, float]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        return {r["step"]: r["loss"] for r in rows if r["step"] >= after_step}

    la, lb = losses(a), losses(b)
    common = sorted(set(la) & set(lb))
    return max((abs(la[s] - lb[s]) for s in common), default=float("nan"))
