"""How sharply the prior tells one shape's caption from another's, alone and beside a second object.

Distillation can only teach a shape the prior's score tells apart. This reads that signal straight from the
prior: ground-truth renders of one scene from training cameras are noised (the same t and ε for every caption)
and the prior's ε-MSE is taken under the true caption and under the caption with the shape swapped. Per true
shape it prints `top1` (the share of views whose lowest loss is the true caption's) and, per rival shape, the
relative loss gap (L_rival − L_true) / L_true: the larger the gap, the louder the prior's score says which shape
it is. `--absolute` prints L_rival − L_true instead (the mean ε-MSE difference per timestep and draw, × 1000)
and the true caption's loss L_true beside it: a better-trained prior lowers L_true, which alone widens the
relative gap (docs/notebook.md §9i). `--partner "blue cube"` asks the same of "a red SHAPE next to a blue cube" (the
relation of ShapesWorld's weakest prompts, docs/notebook.md §9g).

    python bench/probes/caption_gaps.py [--prior bundled|FOLDER] [--partner "blue cube"] [--colour red]
        [--shapes cone pyramid ...] [--views 16] [--t 50 100 200 350 500] [--reps 2] [--absolute]
        [--elevation 60 85]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def caption(colour: str, shape: str, partner: str | None) -> str:
    """The grammar's prompt for a `colour` `shape`, alone or next to `partner` (e.g. "blue cube")."""
    from asdcli.shapes.world.grammar import ObjectSpec, SceneSpec, parse_prompt

    head = ObjectSpec(shape, colour)
    if not partner:
        return SceneSpec((head,)).text
    return SceneSpec((head, parse_prompt(f"the {partner}").objects[0]), "next to").text


def gap_cameras(views: int, gen: torch.Generator, elevation: tuple[float, float] | None = None):
    """`views` cameras drawn from the generators' training distribution; `elevation` (degrees) replaces its
    range, e.g. (60, 85) for the views the prior was trained to caption as overhead."""
    from asdcli.config import CameraConfig
    from asdcli.render.cameras import sample_training_cameras

    camera = CameraConfig() if elevation is None else CameraConfig(elevation=elevation)
    return sample_training_cameras(camera, views, 1, gen)


def shape_gaps(prior, true: str, shapes: list[str], colour: str, partner: str | None, views: int, ts: list[int],
               reps: int, gen: torch.Generator, absolute: bool = False,
               elevation: tuple[float, float] | None = None) -> tuple[float, float, dict[str, float]]:
    """(top-1 rate of the true caption over the views, L_true, {rival shape: mean loss gap}): the gap relative to
    L_true, or with `absolute` L_rival − L_true; L_true and absolute gaps are per timestep and draw, × 1000.
    `elevation`: the cameras' range in degrees (`gap_cameras`)."""
    from asdcli.shapes.eval_prior import caption_losses
    from asdcli.shapes.gt_render import render_scenes

    cams = gap_cameras(views, gen, elevation)
    size = prior.image_size
    gt = render_scenes([caption(colour, true, partner)] * views, cams, size, size, supersample=2)
    z = gt.rgb.permute(0, 3, 1, 2) * 2 - 1  # the prior's pixel space, white background as in its training
    conds = [prior.conditioning([caption(colour, s, partner)] * views, cams.elevation, cams.azimuth,
                                cams.c2w).cond for s in shapes]
    losses = caption_losses(prior, z, conds, gen, tuple(ts), reps)  # [shapes, views]
    i = shapes.index(true)
    top1 = float((losses.argmin(0) == i).float().mean())
    per_term = 1000.0 / (len(ts) * reps)
    diffs = losses - losses[i]  # [shapes, views]
    gaps = diffs * per_term if absolute else diffs / losses[i]
    return top1, float(losses[i].mean()) * per_term, {s: float(gaps[k].mean()) for k, s in enumerate(shapes) if k != i}


def main() -> None:
    from asdcli.bundled import bundled_prior
    from asdcli.shapes.prior import ShapesWorldPrior, ShapesWorldPriorConfig
    from asdcli.shapes.world.scenes import PRIMITIVES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", default="bundled", help="'bundled' or an exported diffusers folder")
    ap.add_argument("--partner", default=None, help='second object, e.g. "blue cube" ("next to" pairs)')
    ap.add_argument("--colour", default="red")
    ap.add_argument("--shapes", nargs="+", default=list(PRIMITIVES), choices=list(PRIMITIVES))
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--t", type=int, nargs="+", default=[50, 100, 200, 350, 500])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--absolute", action="store_true", help="L_rival − L_true (× 1000) instead of the relative gap")
    ap.add_argument("--elevation", type=float, nargs=2, metavar=("LO", "HI"),
                    help="camera elevation range in degrees (default: the training cameras', -10 to 45; the prior "
                         "captions views above 60 as overhead)")
    args = ap.parse_args()
    folder = bundled_prior() if args.prior == "bundled" else Path(args.prior)
    prior = ShapesWorldPrior(ShapesWorldPriorConfig(model=str(folder)))
    gen = torch.Generator().manual_seed(args.seed)
    for true in args.shapes:
        top1, l_true, gaps = shape_gaps(prior, true, args.shapes, args.colour, args.partner, args.views, args.t,
                                        args.reps, gen, args.absolute, args.elevation)
        nearest = min(gaps, key=gaps.get)
        head = f"L_true {l_true:.2f}  " if args.absolute else ""
        print(f"{caption(args.colour, true, args.partner):36s} {head}top1 {top1:.2f}  nearest {nearest} "
              f"{gaps[nearest]:+.3f}  | " + " ".join(f"{s} {g:+.3f}" for s, g in gaps.items()), flush=True)


if __name__ == "__main__":
    main()
