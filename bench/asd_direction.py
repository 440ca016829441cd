"""How much of ASD's update is classifier-free guidance, per timestep, on a generator's own training renders.

ASD's direction splits into a guidance term and an asynchronous term:

    ε̂_cfg(z_t, t) − ε̂_c(z_{t⁺}, t⁺) = (s − 1)·(ε̂_c − ε̂_u)(z_t, t)  +  (ε̂_c(z_t, t) − ε̂_c(z_{t⁺}, t⁺)).

Both come from the loss's own `direction` (the same noise and Δt): at s = 1 it is the asynchronous term alone,
and the difference of two scales is the guidance term. When the guidance term dominates, the directions at two
large scales point the same way (`cos` near 1) and Adam, which normalises the step's size, learns the same thing
from both: the scale then cannot change what the generator learns, however it is set (BENCHMARKS §9e).

    python bench/asd_direction.py RUN|bundled --prompts FILE [--t 50 100 200 500] [--scales 3 7.5]
        [--shift-ratio 0.1 0.5]

The renders are the run's last-step training views (its camera ranges and resolution) over a grey background;
the prior is the run's recipe's.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def training_views(model, prompts: list[str], seed: int = 0):
    """Renders [P, 3, H, W] of the generator from one training camera per prompt, and those cameras."""
    from asdcli.engine.inference import field_state
    from asdcli.render.background import Background
    from asdcli.render.cameras import sample_training_cameras
    from asdcli.render.volume import render

    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    res = int(round(cfg.render.resolution.at(cfg.train.steps, cfg.train.steps)))
    cams = sample_training_cameras(cfg.render.camera, len(prompts), 1, gen).to(model.device)
    state, _ = field_state(model, prompts, seed=cfg.seed)
    grey = Background("solid", (0.5, 0.5, 0.5)).to(model.device)
    with torch.no_grad():
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="run directory or bundled")
    ap.add_argument("--prompts", type=Path, required=True, help="text file, one prompt per line")
    ap.add_argument("--t", type=int, nargs="+", default=[50, 100, 200, 500])
    ap.add_argument("--scales", type=float, nargs="+", default=[3.0, 7.5])
    ap.add_argument("--shift-ratio", type=float, nargs="+", default=[0.1])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prompts = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
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
