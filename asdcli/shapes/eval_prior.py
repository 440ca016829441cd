"""Sample quality of an exported ShapesWorld prior, measured against the ground truth.

The prior is loaded exactly as recipes load it (`ShapesWorldPrior`, kind shapesworld, model = the
folder) and conditioned through its own `conditioning` (view suffix from the camera, negative prompt as the
unconditional branch). Samples: DDIM (`asdcli.priors.ddim`: η = 0, x̂0 clipped to [−1, 1]) with
classifier-free guidance ε̂ = ε_u + s·(ε_c − ε_u), the guidance the distillation losses use.

Per sample, with a camera drawn from the training distribution and the GT render of the same prompt from it:
- `mask_iou`: foreground of the sample (pixels farther than FG_DIST from the background colour, estimated from
  the image border) vs the GT coverage (> 0.5). The caption fixes the view only to a 90° bucket, so the IoU of
  a GT render of the same prompt from ANOTHER camera of the same bucket (`ceiling_iou`) is the reachable level,
  and that of another prompt from the same camera (`other_iou`) is the floor.
- `color_ok` (single objects): the sample's median foreground colour is nearer the prompt colour than any
  other grammar colour, each scaled by the GT render's median shading factor (Lambertian is multiplicative).
- `pair_color_ok` (attribute binding; pairs of two colours, "next to" only in front/back views, which fix the
  left-right order; `pair_cases` of them): inside each object's GT region the sample has that object's colour.
  A small text encoder tends to paint both objects one colour. `gt_pair_color_ok` (the GT renders judged the
  same way) is the ceiling.
- `view_width_ratio` ("next to" pairs; `view_cases` of them): the sample's foreground width (columns it spans)
  from azimuth 90° over that from azimuth 0°, elevation 15°, the same starting noise for both. A pair seen from
  the side has one object hiding the other, so the GT renders' ratio (`gt_view_width_ratio`) is well below 1; a
  prior that ignores the view caption draws the same side-by-side picture for both and scores ≈ 1.
- `view_order_ok` / `view_order_swapped` (two-colour "next to" pairs; `order_cases` of them): from azimuth 0° and
  180° (same noise), each sample judged by `pair_color_ok` against the GT of its own view / of the opposite one.
  The pair's left-right order flips between front and back; a prior blind to that scores ok ≈ swapped.
- `order_loss_gap` / `color_loss_gap` ("next to" pairs, GT renders from azimuth 0° and 180°): how much the
  prior's denoising loss rises, relative to the right caption, when the caption names the objects the other way
  round ("B next to A": the pair turned 180°, which the image is not) or with every colour replaced. Same t and ε
  for all captions, no sampling, so it takes seconds. A prior that reads the caption as a bag of objects scores
  an order gap ≈ 0 while its colour gap is large: it cannot tell ASD which object belongs on which side.
- `saturated`: share of foreground pixels with a channel pinned at 0 or 1 (the CFG collapse the first study saw
  filled the frame with one saturated colour); `fg_fraction` vs the GT's shows frame-filling squares too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from asdcli.config import CameraConfig
from asdcli.evaluate import ClipScorer, clip_metrics
from asdcli.media import contact_sheet, save_png
from asdcli.priors.ddim import ddim_sample
from asdcli.priors.perp_neg import BACK, FRONT, view_directions
from asdcli.render.cameras import CameraBatch, cameras_from_angles, sample_training_cameras
from asdcli.shapes.gt_render import render_scenes
from asdcli.shapes.prior import ShapesWorldPrior, ShapesWorldPriorConfig
from asdcli.shapes.prior_data import split_singles_pairs
from asdcli.shapes.train_clip import scene_r_at_1
from asdcli.shapes.world.grammar import COLORS, SceneSpec, parse_prompt

FG_DIST = 0.12


def foreground(img: Tensor) -> Tensor:
    """img [B, 3, H, W] in [0, 1] → bool mask [B, H, W]: far from the median colour of the 1-pixel border."""
    border = torch.cat([img[..., 0, :], img[..., -1, :], img[..., :, 0], img[..., :, -1]], dim=-1)  # [B, 3, 4W]
    bg = border.median(dim=-1).values
    return (img - bg[..., None, None]).norm(dim=1) > FG_DIST


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    inter, union = (a & b).flatten(1).sum(1).float(), (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _nearest_color(got: Tensor, shade: Tensor) -> str:
    """The grammar colour whose albedo, times the GT shading factor `shade`, is nearest RGB `got` [3]."""
    names = list(COLORS)
    dists = torch.stack([(got - shade * torch.tensor(COLORS[n])).norm() for n in names])
    return names[int(dists.argmin())]


def _shade(gt_rgb: Tensor, where: Tensor, color: str) -> Tensor:
    """Median Lambertian shading factor of the GT render gt_rgb [3, H, W] over mask `where` [H, W] painted in
    `color` (1 where the mask is empty)."""
    if not where.any():
        return torch.tensor(1.0)
    return (gt_rgb[:, where] / torch.tensor(COLORS[color])[:, None]).median(dim=1).values.mean()


def color_ok(sample: Tensor, fg: Tensor, gt_rgb: Tensor, gt_alpha: Tensor, color: str) -> bool:
    """sample [3, H, W], fg [H, W] bool, gt_rgb [3, H, W], gt_alpha [H, W]; see the module docstring."""
    if fg.sum() < 3:
        return False
    shade = _shade(gt_rgb, gt_alpha > 0.99, color)
    return _nearest_color(sample[:, fg].median(dim=1).values, shade) == color


def pair_color_ok(sample: Tensor, fg: Tensor, gt_rgb: Tensor, gt_albedo: Tensor, gt_alpha: Tensor,
                  colors: tuple[str, str]) -> bool:
    """Attribute binding of a pair with two different colours. sample [3, H, W], fg [H, W] bool; gt_rgb and
    gt_albedo [3, H, W]: the Lambertian and albedo GT renders from the sample's camera, gt_alpha [H, W].
    True when, inside each object's GT region, the sample's foreground is that object's colour (its median,
    by `_nearest_color` with the region's shading): a prior that paints both objects one colour, or swaps
    them, fails."""
    inside = gt_alpha > 0.99
    for color in colors:
        albedo = torch.tensor(COLORS[color])
        region = inside & ((gt_albedo - albedo[:, None, None]).abs().amax(dim=0) < 1e-3)
        seen = region & fg
        if seen.sum() < 3:
            return False
        if _nearest_color(sample[:, seen].median(dim=1).values, _shade(gt_rgb, region, color)) != color:
            return False
    return True


def _binding_cases(prompts: list[str], cams, thresholds: tuple[float, float, float]) -> dict[int, tuple[str, str]]:
    """{sample index: its two colours} for the samples that `pair_color_ok` can judge: pairs of two colours, and
    for "next to" only front and back views (a side or overhead caption does not say which object is nearer or
    left)."""
    views = view_directions(cams.elevation, cams.azimuth, *thresholds).tolist()
    keep = {}
    for i, p in enumerate(prompts):
        spec = parse_prompt(p)
        if len(spec.objects) != 2 or spec.objects[0].color == spec.objects[1].color:
            continue
        if spec.relation == "next to" and views[i] not in (FRONT, BACK):
            continue
        keep[i] = (spec.objects[0].color, spec.objects[1].color)
    return keep


def _binding_judge(prompts: list[str], cams, gt, thresholds: tuple[float, float, float]):
    """→ (the judged sample indices, fn(images [N, 3, H, W], fg [N, H, W]) → mean pair_color_ok over them)."""
    size = gt.rgb.shape[1]
    albedo = render_scenes(prompts, cams, size, size, shading="albedo", supersample=2)
    cases = _binding_cases(prompts, cams, thresholds)
    refs = {i: (gt.rgb[i].permute(2, 0, 1), albedo.rgb[i].permute(2, 0, 1), gt.alpha[i], colors)
            for i, colors in cases.items()}

    def binding(imgs: Tensor, fg: Tensor) -> float:
        oks = [pair_color_ok(imgs[i], fg[i], *ref) for i, ref in refs.items()]
        return sum(oks) / max(1, len(oks))
    return list(cases), binding


def _cameras_same_bucket(cams, gen: torch.Generator, thresholds: tuple[float, float, float]):
    """For each camera, another training camera whose view suffix is the same (rejection sampling)."""
    want = view_directions(cams.elevation, cams.azimuth, *thresholds)
    keys = ("c2w", "fovy", "elevation", "azimuth", "distance")
    out = {k: getattr(cams, k).clone() for k in keys}
    todo = torch.ones(len(cams), dtype=torch.bool)
    for _ in range(50):
        cand = sample_training_cameras(CameraConfig(), len(cams), 1, gen)
        ok = todo & (view_directions(cand.elevation, cand.azimuth, *thresholds) == want)
        for k in keys:
            out[k][ok] = getattr(cand, k)[ok]
        todo &= ~ok
        if not todo.any():
            break
    return CameraBatch(*(out[k] for k in keys))


def column_span(mask: Tensor) -> Tensor:
    """mask [B, H, W] bool → [B] float: how many image columns hold foreground."""
    return mask.any(dim=1).float().sum(-1)


def view_width_ratio(front: Tensor, side: Tensor) -> float:
    """Mean foreground width of `side` over that of `front` (bool masks [B, H, W] of the same B scenes)."""
    return float(column_span(side).mean() / column_span(front).mean().clamp(min=1.0))


def view_order(front: Tensor, back: Tensor, refs: dict[str, Any], colors: list[tuple[str, str]]) -> dict[str, float]:
    """Left-right order of two-colour "next to" pairs: samples front / back [B, 3, H, W] from azimuth 0° / 180°
    judged by `pair_color_ok` against the GT of their own view (`view_order_ok`) and of the opposite view
    (`view_order_swapped`), each averaged over both views. refs["front"/"back"]: (rgb, albedo, alpha) GT batches
    [B, 3, H, W], [B, 3, H, W], [B, H, W]. The order flips between the two views; a prior blind to front/back
    draws one order for both captions and scores ok ≈ swapped, and ASD's front and back gradients then contradict
    each other (a generator splits the colours top / bottom across both objects instead)."""
    samples = {"front": front, "back": back}
    fgs = {k: foreground(v) for k, v in samples.items()}
    score = {"ok": 0, "swapped": 0}
    for view, other in (("front", "back"), ("back", "front")):
        for i, pair in enumerate(colors):
            args = (samples[view][i], fgs[view][i])
            score["ok"] += pair_color_ok(*args, *(r[i] for r in refs[view][:2]), refs[view][2][i], pair)
            score["swapped"] += pair_color_ok(*args, *(r[i] for r in refs[other][:2]), refs[other][2][i], pair)
    n = 2 * max(1, len(colors))
    return {"view_order_ok": score["ok"] / n, "view_order_swapped": score["swapped"] / n}


class ViewProbe(NamedTuple):
    gt: dict[str, float]  # the GT renders' view_width_ratio (and view_order_ok / _swapped: 1 / 0)
    sample: Callable[[float, int, int], dict[str, float]]  # (scale, DDIM steps, seed) → the samples' figures
    cases: int  # how many "next to" pairs
    order_cases: int  # how many of them have two colours (judged by view_order)
    loss_gaps: dict[str, float]  # order_loss_gap, color_loss_gap (caption_loss_gaps on the front and back GT)


def _view_probe(prior: Any, prompts: list[str], size: int) -> ViewProbe | None:
    """view_width_ratio and view_order on the "next to" pairs among `prompts` (None when there are none). Cameras:
    azimuth 0° (front), 90° (side) and 180° (back), elevation 15°, fovy 50°, the training cameras' middle relative
    distance; the same starting noise for a pair's three views, so only the caption differs."""
    pairs = [p for p in prompts if parse_prompt(p).relation == "next to"]
    if not pairs:
        return None
    n = len(pairs)
    az = torch.tensor([0.0] * n + [90.0] * n + [180.0] * n)
    cams = cameras_from_angles(torch.full_like(az, 15.0), az, torch.full_like(az, 1.2 / math.tan(math.radians(25))),
                               torch.full_like(az, 50.0))
    gt = render_scenes(pairs * 3, cams, size, size, supersample=2)
    albedo = render_scenes(pairs * 3, cams, size, size, shading="albedo", supersample=2)
    two = [i for i, p in enumerate(pairs) if len({o.color for o in parse_prompt(p).objects}) == 2]
    colors = [tuple(o.color for o in parse_prompt(pairs[i]).objects) for i in two]
    chw = (gt.rgb.permute(0, 3, 1, 2), albedo.rgb.permute(0, 3, 1, 2), gt.alpha)
    refs = {v: tuple(x[off:off + n][two] for x in chw) for v, off in (("front", 0), ("back", 2 * n))}
    cond = prior.conditioning(pairs * 3, cams.elevation, cams.azimuth, cams.c2w)
    views = [slice(k * n, (k + 1) * n) for k in range(3)]

    def figures(front: Tensor, side: Tensor, back: Tensor) -> dict[str, float]:
        ratio = {"view_width_ratio": view_width_ratio(foreground(front), foreground(side))}
        return {**ratio, **view_order(front[two], back[two], refs, colors)} if two else ratio

    def sample(scale: float, steps: int, seed: int) -> dict[str, float]:
        return figures(*(ddim_sample(prior, cond.cond[sl], cond.uncond[sl], scale, steps,
                                     torch.Generator().manual_seed(seed)) for sl in views))
    fb = torch.cat([torch.arange(n), torch.arange(2 * n, 3 * n)])  # the front and back views
    wrong = {"order": [swapped_pair(p) for p in pairs], "color": [recolored(p) for p in pairs]}
    conds = {"right": cond.cond[fb], **{k: prior.conditioning(v * 2, cams.elevation[fb], cams.azimuth[fb],
                                                              cams.c2w[fb]).cond for k, v in wrong.items()}}
    gaps = caption_loss_gaps(prior, prior.encode(chw[0][fb]), conds, torch.Generator().manual_seed(0))
    return ViewProbe(figures(*(chw[0][sl] for sl in views)), sample, n, len(two), gaps)


def swapped_pair(prompt: str) -> str:
    """"A next to B" → "B next to A" (the same scene turned 180°)."""
    spec = parse_prompt(prompt)
    return SceneSpec(spec.objects[::-1], spec.relation).text


def recolored(prompt: str, shift: int = 3) -> str:
    """The prompt with every colour replaced by the one `shift` places later in the grammar's list."""
    names = list(COLORS)
    spec = parse_prompt(prompt)
    objs = tuple(replace(o, color=names[(names.index(o.color) + shift) % len(names)]) for o in spec.objects)
    return SceneSpec(objs, spec.relation).text


@torch.no_grad()
def caption_losses(prior: Any, z: Tensor, conds: list[Tensor], gen: torch.Generator,
                   ts: tuple[int, ...] = (100, 300, 500, 700, 900), reps: int = 2) -> Tensor:
    """[K, B] the prior's ε-MSE on the prior-space images z [B, C, h, w] under each of the K text states
    conds[k] [B, L, D], summed over the timesteps `ts` and `reps` draws of ε each (the same t and ε for every
    caption)."""
    losses = torch.zeros(len(conds), z.shape[0])
    for t in ts:
        a = prior.alphas_cumprod[t]
        for _ in range(reps):
            eps = torch.randn(z.shape, generator=gen)
            z_t = a.sqrt() * z + (1 - a).sqrt() * eps
            steps = torch.full((z.shape[0],), t)
            for k, cond in enumerate(conds):
                losses[k] += (prior.predict_noise(z_t, steps, cond) - eps).square().mean(dim=(1, 2, 3)).cpu()
    return losses


def caption_loss_gaps(prior: Any, z: Tensor, conds: dict[str, Tensor], gen: torch.Generator,
                      ts: tuple[int, ...] = (100, 300, 500, 700, 900), reps: int = 2) -> dict[str, float]:
    """{"{k}_loss_gap": (L_k − L_right) / L_right} for every caption set k but "right": L is `caption_losses`
    over the whole batch; conds[k] [B, L, D] are the text states."""
    losses = dict(zip(conds, caption_losses(prior, z, list(conds.values()), gen, ts, reps).mean(dim=1).tolist(),
                      strict=True))
    return {f"{k}_loss_gap": (v - losses["right"]) / losses["right"] for k, v in losses.items() if k != "right"}


def _prompts(split: str, n: int) -> list[str]:
    """Half singles, half pairs, from the split's seeded order; fewer (with a warning) where the split runs out."""
    singles, pairs = split_singles_pairs(0, split)
    out = singles[: n // 2] + pairs[: n - n // 2]
    if len(out) < n:
        warnings.warn(f"--prompts {n}: the {split} split has {len(singles)} single-object and {len(pairs)} pair "
                      f"prompts; evaluating {len(out)} ({min(len(singles), n // 2)} singles)", stacklevel=2)
    return out


def _clip_retrieval(clip: str | Path, prompts: list[str]):
    """→ fn(images [N, H, W, 3] in [0, 1], one per prompt) → {clip_r_at_1, clip_r_at_1_scene} among `prompts`."""
    scorer = ClipScorer(str(clip))
    text = scorer.text_embeddings(prompts)

    def retrieval(images: Tensor) -> dict[str, float]:
        emb = scorer.image_embeddings(images)[:, None]  # [N, 1, D]
        return {"clip_r_at_1": float(clip_metrics(emb, text)["r_at_1"].mean()),
                "clip_r_at_1_scene": scene_r_at_1(emb, text, prompts)}
    return retrieval


def _sample_metrics(imgs: Tensor, prompts: list[str], gt, binding) -> dict[str, float]:
    """mask_iou, color_ok (singles), pair_color_ok, saturated and fg_fraction of samples imgs [N, 3, H, W] in
    [0, 1] against the ground-truth renders `gt` (rgb [N, H, W, 3], alpha [N, H, W]) from the same cameras."""
    fg = foreground(imgs)
    sat = ((imgs < 0.02) | (imgs > 0.98)).any(dim=1) & fg
    oks = [color_ok(imgs[i], fg[i], gt.rgb[i].permute(2, 0, 1), gt.alpha[i], parse_prompt(p).objects[0].color)
           for i, p in enumerate(prompts) if len(parse_prompt(p).objects) == 1]
    return {"mask_iou": float(mask_iou(fg, gt.alpha > 0.5).mean()), "color_ok": sum(oks) / max(1, len(oks)),
            "pair_color_ok": binding(imgs, fg), "saturated": float(sat.sum() / fg.sum().clamp(min=1)),
            "fg_fraction": float(fg.float().mean())}


def evaluate_prior(model: str | Path, n_prompts: int = 24, scales=(1.0, 3.0, 7.5), split: str = "test",
                   steps: int = 50, grid: str | None = None, seed: int = 0,
                   clip: str | Path | None = None) -> dict[str, Any]:
    """Summary per guidance scale (means over samples): mask_iou, ceiling_iou, other_iou, color_ok (singles),
    pair_color_ok (pairs), view_width_ratio ("next to" pairs), saturated, fg_fraction, gt_fg_fraction; with `clip`,
    the CLIP R@1 of the samples against the evaluated prompts (`clip_r_at_1`, and `clip_r_at_1_scene` counting the
    "next to" twin) and that of the GT renders from the same cameras beside them. One sample per prompt, cameras
    from the training distribution."""
    prior = ShapesWorldPrior(ShapesWorldPriorConfig(model=str(model)))
    prompts = _prompts(split, n_prompts)
    gen = torch.Generator().manual_seed(seed)
    cams = sample_training_cameras(CameraConfig(), len(prompts), 1, gen)
    th = prior.view_thresholds
    size = prior.image_size
    gt = render_scenes(prompts, cams, size, size, supersample=2)
    other = render_scenes(prompts[1:] + prompts[:1], cams, size, size, supersample=2)
    ceiling = render_scenes(prompts, _cameras_same_bucket(cams, gen, th), size, size, supersample=2)
    cond = prior.conditioning(prompts, cams.elevation, cams.azimuth, cams.c2w)
    gt_mask = gt.alpha > 0.5
    cases, binding = _binding_judge(prompts, cams, gt, th)
    report: dict[str, Any] = {"model": str(model), "split": split, "prompts": len(prompts), "ddim_steps": steps,
                              "ceiling_iou": float(mask_iou(gt_mask, ceiling.alpha > 0.5).mean()),
                              "other_iou": float(mask_iou(gt_mask, other.alpha > 0.5).mean()),
                              "gt_fg_fraction": float(gt_mask.float().mean()), "pair_cases": len(cases)}
    gt_chw = gt.rgb.permute(0, 3, 1, 2)
    report["gt_pair_color_ok"] = binding(gt_chw, foreground(gt_chw))  # the metric's ceiling (1 unless broken)
    probe = _view_probe(prior, prompts, size)
    if probe:
        report.update({f"gt_{k}": v for k, v in probe.gt.items()})
        report["view_cases"], report["order_cases"] = probe.cases, probe.order_cases
        report.update(probe.loss_gaps)
    retrieval = _clip_retrieval(clip, prompts) if clip else None
    if retrieval:
        report.update({f"gt_{k}": v for k, v in retrieval(gt.rgb).items()})
    sheets = []
    for scale in scales:
        imgs = ddim_sample(prior, cond.cond, cond.uncond, float(scale), steps, torch.Generator().manual_seed(seed))
        report[f"cfg_{scale:g}"] = {
            **_sample_metrics(imgs, prompts, gt, binding),
            **(retrieval(imgs.permute(0, 2, 3, 1)) if retrieval else {}),
            **(probe.sample(float(scale), steps, seed) if probe else {}),
        }
        sheets.append(imgs.permute(0, 2, 3, 1))
    if grid:
        rows = [gt.rgb] + sheets  # row 0: ground truth, then one row per guidance scale
        save_png(contact_sheet([im for row in rows for im in row], cols=len(prompts)), grid)
    return report
