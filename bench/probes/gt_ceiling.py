"""The generator's ceiling on ShapesWorld: the same recipe, but every render supervised by the prompt's
ground-truth render from the same camera instead of by the prior.

Why: `asd eval`'s `shape_r@1` and colour error of an ASD-trained generator mix two limits, what the prior's
score tells the generator and what the generator can represent. Fitting the ground truth directly (same
generator, cameras, renderer, steps and optimiser; no prior in the loop) measures the second alone, so a
target that the fit misses cannot be reached by any distillation loss either.

    python bench/probes/gt_ceiling.py fit recipes/shapes_generator.yaml --out RUN [key=value ...] [--steps N]
    asd eval --checkpoint RUN --prompts FILE --json out.json
    python bench/probes/gt_ceiling.py levels RUN|bundled|gt --prompts FILE
    python bench/probes/gt_ceiling.py colours RUN|bundled --prompts FILE
    python bench/probes/gt_ceiling.py compare RUN|bundled [RUN ...] [--sets 4] [--n 32]

`levels` scores the occupancy {SDF < level} of a run (or the bundled generator) for several levels: IoU,
shape_r@1 and its volume over the scenes'. With `gt` it offsets the ground-truth SDFs themselves, which shows
how far a surface may sit from the true one before retrieval fails. `compare` scores generators side by side on
the seeded prompt sets of docs/notebook.md §9b–§9k (`sample_prompts(None, split, n, seed)`, seeds 0 … sets − 1,
train and test): `shape_r@1`, IoU and volume at level 0 and the colour error, per set and their mean.
`colours` splits `asd eval`'s colour error into each object's colour (bias) and where it lies (placement), and
compares the saturation of the generator's renders with the ground truth's.

The run is an ordinary asd run (checkpoints, --resume, validation media), so `asd eval` and `asd generate`
read it. Loss: MSE of the foreground colour (rendered over black, as the ground truth is) + MSE of the
opacity against the ground-truth coverage, plus the recipe's regularisers (eikonal keeps the SDF an SDF).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from asdcli.engine.steps import MicroStep, StepRunner  # noqa: E402


class GroundTruthStep(StepRunner):
    """One micro-step of the ground-truth fit: the same prompts and cameras as distillation draws."""

    supersample = 2  # anti-aliased coverage, as the prior's training renders

    def __call__(self, prompts: list[str], step: int, gen: torch.Generator) -> MicroStep:
        from asdcli.losses.base import LossOutput
        from asdcli.render.background import Background
        from asdcli.render.volume import render
        from asdcli.shapes.gt_render import render_scenes

        cfg, generator = self.cfg, self.parts.generator
        batch, cams, noise, res = self.draw(prompts, step, gen)
        state = generator(self.text(batch).to(self.device), noise)
        black = Background("solid", (0.0, 0.0, 0.0)).to(self.device)  # the render's colour is its foreground
        out = render(generator, state, cams, res, res, cfg.render, black, len(batch), gen, need_normals=True)
        with torch.no_grad():
            gt = render_scenes(batch, cams, res, res, shading=cfg.render.shading, background=(0.0, 0.0, 0.0),
                               supersample=self.supersample)
        rgb = torch.nn.functional.mse_loss(out.rgb.float(), gt.rgb)
        mask = torch.nn.functional.mse_loss(out.opacity.float().squeeze(-1), gt.alpha)
        fit = LossOutput(rgb + mask, {"gt_rgb": float(rgb.detach()), "gt_mask": float(mask.detach())})
        return self._total(fit, out, step, cfg.train.steps)


LEVELS = (-0.06, -0.03, 0.0, 0.03, 0.06, 0.1)


@functools.lru_cache(maxsize=2)
def loaded(source: str):
    """The generator of a run or of "bundled", loaded once per process (`compare` scores it on many sets)."""
    from asdcli.engine.inference import load_model

    return load_model(None if source == "bundled" else source)


def sdf_grids(source: str, prompts: list[str], res: int) -> list[torch.Tensor]:
    """[R, R, R] SDF grids of each prompt: the ground truth ("gt") or a generator (a run, or "bundled")."""
    from asdcli.engine.inference import field_state
    from asdcli.shapes.evaluation import grid_points, predicted_value
    from asdcli.shapes.world.grammar import parse_prompt
    from asdcli.shapes.world.scenes import SceneField

    if source == "gt":
        pts = grid_points(res, 1.0).reshape(-1, 3)
        return [SceneField(parse_prompt(p)).sdf(pts).reshape(res, res, res) for p in prompts]
    model = loaded(source)
    if model.generator.field_type != "sdf":
        from asdcli.errors import UserError

        raise UserError(f"{source}: its generator's field is {model.generator.field_type}, not an SDF; "
                        f"`levels` sweeps SDF levels only")
    state, _ = field_state(model, prompts, seed=model.cfg.seed)
    return [predicted_value(model, state, i, res) for i in range(len(prompts))]


def level_sweep(source: str, prompts: list[str], levels=LEVELS, res: int = 64) -> list[dict]:
    """Per level: mean IoU, shape_r@1 and occupied volume / the scenes' volume of {SDF < level}."""
    from asdcli.shapes.world.grammar import parse_prompt
    from asdcli.shapes.world.metrics import gt_occupancy, iou_matrix, shape_hits_from_matrix

    specs = [parse_prompt(p) for p in prompts]
    grids, gt = sdf_grids(source, prompts, res), gt_occupancy(specs, res)
    rows = []
    for level in levels:
        occs = [g < level for g in grids]
        ious = iou_matrix(occs, gt)
        volume = float(sum(o.float().sum() for o in occs) / gt.float().sum())
        rows.append({"level": level, "iou": float(ious.diagonal().mean()), "volume_ratio": volume,
                     "shape_r@1": float(shape_hits_from_matrix(ious, specs).float().mean())})
    return rows


def _median_corrected(pred: torch.Tensor, gt: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """pred [N, 3] with each object's median colour moved onto its true colour (owner [N]: nearest object)."""
    out = pred.clone()
    for k in owner.unique().tolist():
        mask = owner == k
        out[mask] = pred[mask] - pred[mask].median(0).values + gt[mask][0]
    return out


def _excess(pred: torch.Tensor, gt: torch.Tensor) -> tuple[float, float]:
    """(chroma, brightness) of pred [N, 3] minus gt's [N, 3], means over N: chroma is max − min channel (> 0:
    more saturated), brightness the channel mean (> 0: lighter)."""
    chroma = lambda rgb: rgb.max(-1).values - rgb.min(-1).values  # noqa: E731
    return float((chroma(pred) - chroma(gt)).mean()), float((pred.mean(-1) - gt.mean(-1)).mean())


def render_excess(model, state, prompt: str, res: int = 64, views: int = 4) -> tuple[float, float]:
    """`_excess` of one prompt's render (state of that prompt alone) over the ground truth's render, on the pixels
    both cover in each of `views` cameras of the run's evaluation orbit, averaged over the views."""
    from asdcli.engine.inference import eval_cameras
    from asdcli.render.background import Background
    from asdcli.render.volume import render
    from asdcli.shapes.gt_render import render_scenes

    cams = eval_cameras(model.cfg, views)
    black = Background("solid", (0.0, 0.0, 0.0)).to(model.device)
    with torch.no_grad():
        out = render(model.generator, state, cams.to(model.device), res, res, model.cfg.render, black, 1,
                     torch.Generator().manual_seed(0))
        gt = render_scenes([prompt], cams, res, res, shading=model.cfg.render.shading, background=(0.0, 0.0, 0.0),
                           supersample=2)
    a, ga = out.opacity.float().cpu().squeeze(-1), gt.alpha
    both = (a > 0.95) & (ga > 0.95)
    unmix = lambda rgb, alpha: rgb / alpha.clamp(min=1e-6)[..., None]  # noqa: E731  (over black: divide out α)
    pred, truth = unmix(out.rgb.float().cpu(), a), unmix(gt.rgb, ga)
    per_view = [_excess(pred[v][both[v]], truth[v][both[v]]) for v in range(views) if bool(both[v].any())]
    if not per_view:
        return float("nan"), float("nan")
    return tuple(sum(col) / len(per_view) for col in zip(*per_view, strict=True))


def colour_split(source: str, prompts: list[str], n: int = 2048) -> dict:
    """Means over prompts: `color_error` (as `asd eval`), `placement_error` (the same with each object's median
    colour set right: colour on the wrong object or part), `chroma_excess` / `brightness_excess` (the renders'
    saturation / lightness over the GT renders') and `albedo_brightness_excess` (the colour field's lightness
    on the true surface over the true colours'; above the renders' figure, the generator's shading is darker)."""
    from asdcli.engine.inference import field_state, query_fn, select_prompt
    from asdcli.shapes.world.grammar import parse_prompt
    from asdcli.shapes.world.metrics import surface_colours
    from asdcli.shapes.world.scenes import SceneField

    model = loaded(source)
    errors, placement, excess, albedo = [], [], [], []
    for start in range(0, len(prompts), 8):
        part = prompts[start:start + 8]
        state, _ = field_state(model, part, seed=model.cfg.seed)
        for i, prompt in enumerate(part):
            excess.append(render_excess(model, select_prompt(state, i), prompt))
            field = SceneField(parse_prompt(prompt))
            pts, pred, gt = surface_colours(lambda p, f=query_fn(model, state, i): f(p)[1], field.spec, n)
            owner = field.batch.object_sdf(pts, 0).argmin(1)
            errors.append(float((pred - gt).abs().mean()))
            albedo.append(_excess(pred, gt)[1])
            placement.append(float((_median_corrected(pred, gt, owner) - gt).abs().mean()))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"color_error": mean(errors), "placement_error": mean(placement),
            "chroma_excess": mean([c for c, _ in excess]), "brightness_excess": mean([b for _, b in excess]),
            "albedo_brightness_excess": mean(albedo)}


def seeded_scores(source: str, split: str, sets: int, n: int) -> list[dict]:
    """Per seeded set of `split`: level-0 IoU, shape_r@1 and volume ratio, and the colour error."""
    from study_score import sample_prompts

    rows = []
    for seed in range(sets):
        prompts = sample_prompts(None, split, n, seed)
        level0 = level_sweep(source, prompts, levels=(0.0,))[0]
        rows.append({**level0, "color_error": colour_split(source, prompts)["color_error"]})
    return rows


def print_comparison(sources: list[str], sets: int, n: int) -> None:
    """One line per source and split: each metric's mean over the sets, then shape_r@1 per set."""
    keys = ("shape_r@1", "iou", "volume_ratio", "color_error")
    for source in sources:
        for split in ("train", "test"):
            rows = seeded_scores(source, split, sets, n)
            means = "  ".join(f"{k} {sum(r[k] for r in rows) / len(rows):.3f}" for k in keys)
            per_set = " ".join(f"{r['shape_r@1']:.2f}" for r in rows)
            print(f"{source}  {split:5s}  {means}  shape_r@1 per set {per_set}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="train a recipe's generator on ground-truth renders")
    fit.add_argument("recipe", type=Path)
    fit.add_argument("--out", required=True)
    fit.add_argument("--steps", type=int)
    fit.add_argument("--resume", action="store_true")
    lv = sub.add_parser("levels", help="score {SDF < level} of a run, the bundled generator or the ground truth")
    lv.add_argument("source", help="run directory, bundled or gt")
    lv.add_argument("--prompts", type=Path, required=True, help="text file, one ShapesWorld prompt per line")
    co = sub.add_parser("colours", help="colour error split into bias and placement; render saturation")
    co.add_argument("source", help="run directory or bundled")
    co.add_argument("--prompts", type=Path, required=True, help="text file, one ShapesWorld prompt per line")
    cmp = sub.add_parser("compare", help="generators side by side on the seeded train and test prompt sets")
    cmp.add_argument("sources", nargs="+", help="run or checkpoint directories, or bundled")
    cmp.add_argument("--sets", type=int, default=4, help="seeded sets per split (seeds 0 … sets − 1)")
    cmp.add_argument("--n", type=int, default=32, help="prompts per set")
    ap.add_argument("--threads", type=int, default=1)
    args, rest = ap.parse_known_args()  # the fit's recipe overrides (key=value) may sit between options
    bad = [r for r in rest if "=" not in r or r.startswith("-") or args.command != "fit"]
    if bad:
        ap.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = rest
    torch.set_num_threads(args.threads)
    if args.command in ("levels", "colours"):
        prompts = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
    if args.command == "colours":
        print("  ".join(f"{k} {v:+.3f}" if k.endswith("excess") else f"{k} {v:.3f}"
                        for k, v in colour_split(args.source, prompts).items()))
        return
    if args.command == "compare":
        print_comparison(args.sources, args.sets, args.n)
        return
    if args.command == "levels":
        for row in level_sweep(args.source, prompts):
            print(f"level {row['level']:+.2f}  iou {row['iou']:.3f}  shape_r@1 {row['shape_r@1']:.3f}  "
                  f"volume {row['volume_ratio']:.2f}")
        return
    from asdcli.engine.trainer import Trainer
    from asdcli.prompts import recipe_prompts
    from asdcli.recipe import flag_overrides, load_recipe

    cfg = load_recipe(args.recipe, args.overrides, flag_overrides(args.steps, args.out, None))
    if cfg.render.shading == "lambertian" and cfg.render.light != "camera":
        ap.error("render.light: the ground-truth renders are lit from the camera; set render.light=camera")
    prompts, val = recipe_prompts(cfg)
    trainer = Trainer(cfg, prompts, val, resume=args.resume, quiet=False)
    trainer.steps = GroundTruthStep(cfg, trainer.parts, trainer.text, trainer.device)
    result = trainer.fit()
    print(f"done: {result.step} steps at {result.steps_per_s:.2f} steps/s → {result.run_dir}")


if __name__ == "__main__":
    from asdcli.errors import UserError
    from asdcli.shapes.world.grammar import PromptError

    try:
        main()
    except (UserError, PromptError) as exc:  # a bad recipe key, run directory or prompt: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
