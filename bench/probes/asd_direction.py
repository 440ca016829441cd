"""How much of ASD's update is classifier-free guidance, per timestep, on a generator's own training renders.

ASD's direction splits into a guidance term and an asynchronous term:

    ε̂_cfg(z_t, t) − ε̂_c(z_{t⁺}, t⁺) = (s − 1)·(ε̂_c − ε̂_u)(z_t, t)  +  (ε̂_c(z_t, t) − ε̂_c(z_{t⁺}, t⁺)).

Both come from the loss's own `direction` (the same noise and Δt): at s = 1 it is the asynchronous term alone,
and the difference of two scales is the guidance term. When the guidance term dominates, the directions at two
large scales point the same way (`cos` near 1) and Adam, which normalises the step's size, learns the same thing
from both: the scale then cannot change what the generator learns, however it is set (docs/notebook.md §9e).

    python bench/probes/asd_direction.py RUN|bundled --prompts FILE [--t 50 100 200 500] [--scales 3 7.5]
        [--shift-ratio 0.1 0.5]

The renders are the run's last-step training views (its camera ranges and resolution) over a grey background;
the prior is the run's recipe's.

Over training, for any loss (the method study, bench/probes/study.py, calls `mechanism_rows` at every scored step):

    python bench/probes/asd_direction.py RUN|bench/study/ARM --prompts FILE --over-training

reads every checkpoint of a run (RUN/checkpoints/step_*) or every weight snapshot a study arm committed
(bench/study/ARM/weights/step_*.safetensors with its state/recipe.yaml), and prints per step and timestep the
norms of the asynchronous term, the guidance term (s − 1)(ε_c − ε_u) and SDS's residual ε̂_cfg − ε at the arm's
own guidance scale and timestep window, and the cosine of ASD's update direction with CSD's and SDS's.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def training_views(model, prompts: list[str], seed: int = 0, grad: bool = False):
    """Renders [P, 3, H, W] of the generator from one training camera per prompt, and those cameras; with
    grad=True the renders keep the graph back to the generator's parameters."""
    from asdcli.render.background import Background
    from asdcli.render.cameras import sample_training_cameras
    from asdcli.render.volume import render

    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    res = int(round(cfg.render.resolution.at(cfg.train.steps, cfg.train.steps)))
    cams = sample_training_cameras(cfg.render.camera, len(prompts), 1, gen).to(model.device)
    grey = Background("solid", (0.5, 0.5, 0.5)).to(model.device)
    with torch.set_grad_enabled(grad):
        text = model.encode_text(prompts).to(model.device)
        noise = None
        if model.generator.noise_dim:  # as field_state draws it
            noise = torch.randn(len(prompts), model.generator.noise_dim,
                                generator=torch.Generator().manual_seed(cfg.seed)).to(model.device)
        state = model.generator(text, noise)
        out = render(model.generator, state, cams, res, res, cfg.render, grey, len(prompts), gen)
    return out.rgb.float().permute(0, 3, 1, 2), cams


def _norm(x: torch.Tensor) -> float:
    return float(x.flatten(1).norm(dim=1).mean())


def split_direction(loss, z, cond, t: int, scales: tuple[float, float], window, seed: int = 0) -> dict:
    """One row: the mean per-image norms of the asynchronous term and of the guidance term at each scale, and
    the cosine between the full directions at the two scales, through `loss` (an ASD loss on the prior that
    encoded z [B, C, h, w]); `window` is the timestep window that bounds Δt (ASD's Δt ≤ η·(t − its bottom))."""
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed)).to(z)
    steps = torch.full((z.shape[0],), t, dtype=torch.long, device=z.device)

    def direction(scale: float) -> tuple[torch.Tensor, float]:
        with torch.no_grad():  # the same Δt draw at every scale: one seed for the loss's generator
            d, logs = loss.direction(z, cond, steps, noise, window, torch.Generator().manual_seed(seed + 1), scale)
        return d, logs["dt"]

    asynchronous, dt = direction(1.0)
    lo, hi = (direction(s)[0] for s in scales)
    guidance = (hi - asynchronous) / (scales[1] - 1.0)  # ε̂_c − ε̂_u (with Perp-Neg's terms where the recipe has them)
    cos = torch.nn.functional.cosine_similarity(lo.flatten(1), hi.flatten(1)).mean()
    return {"t": t, "shift_ratio": loss.cfg.shift_ratio, "dt": dt, "async": _norm(asynchronous),
            **{f"guidance@{s:g}": (s - 1.0) * _norm(guidance) for s in scales},
            "cos": float(cos)}


def direction_table(source: str, prompts: list[str], ts=(50, 100, 200, 500), scales=(3.0, 7.5),
                    shift_ratios=(0.1,)) -> list[dict]:
    """Rows of `split_direction` for each shift ratio and timestep, on a run ("bundled": the bundled one)."""
    from asdcli.engine.inference import load_model
    from asdcli.errors import UserError
    from asdcli.losses.timesteps import timestep_window
    from asdcli.registry import build

    if len(scales) != 2 or min(scales) <= 1.0:
        raise UserError(f"--scales: two guidance scales above 1, got {' '.join(f'{s:g}' for s in scales)}")
    model = load_model(None if source == "bundled" else source)
    if model.cfg.loss.kind != "asd":
        raise UserError(f"{source}: its loss is {model.cfg.loss.kind}, not asd; the split is ASD's")
    prior = build("prior", model.cfg.prior, device=model.device)
    images, cams = training_views(model, prompts, model.cfg.seed)
    z = prior.encode(images)
    cond = prior.conditioning(prompts, cams.elevation, cams.azimuth, cams.c2w)
    loss, last = model.cfg.loss, model.cfg.train.steps
    window = timestep_window(prior.num_train_timesteps, loss.t_min, loss.t_max, last, last)  # the run's last step
    rows = []
    for eta in shift_ratios:  # one loss per shift ratio, built from the run's own `loss` section
        asd = build("loss", replace(loss, shift_ratio=eta), prior=prior)
        rows += [split_direction(asd, z, cond, t, tuple(scales), window, seed=i) for i, t in enumerate(ts)]
    return rows


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).mean())


def _flat_cos(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    x, y = torch.cat([g.flatten() for g in a]), torch.cat([g.flatten() for g in b])
    return float(torch.nn.functional.cosine_similarity(x, y, dim=0))


WINDOW_QUANTILES = (0.1, 0.35, 0.65, 0.9)


def mechanism_rows(checkpoint, prompts: list[str], ts=None, seed: int = 0, device: str | None = None,
                   eta: float | None = None) -> list[dict]:
    """Per timestep (default: the quantiles WINDOW_QUANTILES of the arm's timestep window at that step, where
    its training draws t), on one checkpoint of any arm (its renders, its step's window and guidance scale s, one
    noise draw shared by every loss): the norms of ASD's asynchronous term ε̂_c(z_t, t) − ε̂_c(z_{t⁺}, t⁺), of
    the guidance term (s − 1)(ε_c − ε_u), of SDS's residual ε̂_cfg − ε and of ASD's whole direction, and the
    cosines between ASD's direction and CSD's (ε_c − ε_u) and SDS's, per image in the prior's space (`cos_*`)
    and as gradients on the generator's parameters before Adam (`pcos_*`). ASD uses the arm's η when the arm
    is ASD, else the paper's 0.1 (`eta` overrides both). Every direction comes from the loss classes' own
    `direction`."""
    from dataclasses import fields

    from asdcli.engine.checkpoint import load_state, resolve_checkpoint
    from asdcli.engine.inference import load_model
    from asdcli.losses.asd import ASDConfig
    from asdcli.losses.base import ScoreDistillationConfig
    from asdcli.losses.csd import CSDConfig
    from asdcli.losses.sds import SDSConfig
    from asdcli.losses.timesteps import timestep_window
    from asdcli.registry import build

    model = load_model(checkpoint, device)
    cfg, step = model.cfg, load_state(resolve_checkpoint(checkpoint))["step"]
    prior = build("prior", cfg.prior, device=model.device)
    shared = {f.name: getattr(cfg.loss, f.name) for f in fields(ScoreDistillationConfig) if f.name != "kind"}
    if eta is None:
        eta = cfg.loss.shift_ratio if cfg.loss.kind == "asd" else 0.1
    losses = {"asd": build("loss", ASDConfig(kind="asd", shift_ratio=eta, **shared), prior=prior),
              "csd": build("loss", CSDConfig(kind="csd", **shared), prior=prior),
              "sds": build("loss", SDSConfig(kind="sds", **shared), prior=prior)}
    scale = cfg.loss.guidance_scale.at(step, cfg.train.steps)
    window = timestep_window(prior.num_train_timesteps, cfg.loss.t_min, cfg.loss.t_max, step, cfg.train.steps)
    if ts is None:
        ts = [round(window.min_step + q * (window.max_step - window.min_step)) for q in WINDOW_QUANTILES]
    images, cams = training_views(model, prompts, seed, grad=True)
    z = prior.encode(images)
    cond = prior.conditioning(prompts, cams.elevation, cams.azimuth, cams.c2w)
    params = [p for p in model.generator.parameters() if p.requires_grad]
    rows = []
    for i, t in enumerate(ts):
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed * 1000 + i)).to(z)
        steps = torch.full((z.shape[0],), int(t), dtype=torch.long, device=z.device)

        def direction(kind: str, s: float, steps=steps, noise=noise, i=i) -> torch.Tensor:
            with torch.no_grad():  # one Δt draw for ASD at every scale: the same seed for the loss's generator
                return losses[kind].direction(z.detach(), cond, steps, noise, window,
                                              torch.Generator().manual_seed(seed + i + 1), s)[0]

        d = {"async": direction("asd", 1.0), "asd": direction("asd", scale), "csd": direction("csd", scale),
             "sds": direction("sds", scale)}
        grads = {k: torch.autograd.grad(z, params, d[k], retain_graph=True) for k in ("asd", "csd", "sds")}
        rows.append({"t": int(t), "step": step, "kind": cfg.loss.kind, "eta": eta, "scale": scale,
                     "async": _norm(d["async"]), "guidance": (scale - 1.0) * _norm(d["csd"]),
                     "sds_residual": _norm(d["sds"]), "asd": _norm(d["asd"]),
                     "cos_asd_csd": _cos(d["asd"], d["csd"]), "cos_asd_sds": _cos(d["asd"], d["sds"]),
                     "pcos_asd_csd": _flat_cos(grads["asd"], grads["csd"]),
                     "pcos_asd_sds": _flat_cos(grads["asd"], grads["sds"])})
    return rows


def arm_checkpoints(source: Path, scratch: Path) -> list[Path]:
    """Step directories of a run, or of a study arm's committed fp16 weight snapshots written (in fp32, with
    the arm's recipe.yaml) under `scratch` so the engine's loader reads them."""
    from safetensors.torch import load_file, save_file

    from asdcli.engine.checkpoint import step_dirs

    if (source / "checkpoints").is_dir():
        return step_dirs(source / "checkpoints")
    snaps = sorted((source / "weights").glob("step_*.safetensors"))
    if not snaps or not (source / "state" / "recipe.yaml").is_file():
        from asdcli.errors import UserError

        raise UserError(f"{source}: neither a run (checkpoints/) nor a study arm (weights/, state/recipe.yaml)")
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "recipe.yaml").write_text((source / "state" / "recipe.yaml").read_text())
    out = []
    for snap in snaps:
        step_dir = scratch / "checkpoints" / snap.stem
        step_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.float() for k, v in load_file(str(snap)).items()}, str(step_dir / "generator.safetensors"))
        (step_dir / "state.json").write_text(json.dumps({"step": int(snap.stem.split("_")[1])}))
        out.append(step_dir)
    return out


def over_training(source: Path, prompts: list[str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for ckpt in arm_checkpoints(source, Path(tmp)):
            for r in mechanism_rows(ckpt, prompts):
                print(f"step {r['step']:6d}  t {r['t']:4d}  s {r['scale']:g}  eta {r['eta']:g}  "
                      f"|async| {r['async']:.3f}  |guidance| {r['guidance']:.3f}  |SDS residual| "
                      f"{r['sds_residual']:.3f}  cos(ASD, CSD) {r['cos_asd_csd']:.3f} / params "
                      f"{r['pcos_asd_csd']:.3f}  cos(ASD, SDS) {r['cos_asd_sds']:.3f} / params "
                      f"{r['pcos_asd_sds']:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="run directory, bundled, or (with --over-training) a study arm's folder")
    ap.add_argument("--over-training", action="store_true", help="every checkpoint, any loss (see above)")
    ap.add_argument("--prompts", type=Path, required=True, help="text file, one prompt per line")
    ap.add_argument("--t", type=int, nargs="+", default=[50, 100, 200, 500])
    ap.add_argument("--scales", type=float, nargs="+", default=[3.0, 7.5])
    ap.add_argument("--shift-ratio", type=float, nargs="+", default=[0.1])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prompts = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
    if args.over_training:
        return over_training(Path(args.source), prompts)
    lo, hi = args.scales[0], args.scales[-1]
    for row in direction_table(args.source, prompts, args.t, args.scales, args.shift_ratio):
        print(f"eta {row['shift_ratio']:.2f}  t {row['t']:4d}  dt {row['dt']:5.1f}  |async| {row['async']:.3f}  "
              f"|guidance| at {lo:g}: {row[f'guidance@{lo:g}']:.3f}, at {hi:g}: {row[f'guidance@{hi:g}']:.3f}  "
              f"cos(direction at {lo:g}, at {hi:g}) {row['cos']:.3f}")


if __name__ == "__main__":
    from asdcli.errors import UserError

    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
