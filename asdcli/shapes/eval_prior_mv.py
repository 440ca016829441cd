"""4-view consistency check of an exported ShapesWorld 4-view prior (`train_prior_mv`), against ground truth.

The prior is loaded exactly as recipes load it (`MVDreamPrior`, kind mvdream, model = text_model = the folder)
and conditioned through its own `conditioning` (plain prompt, negative prompt as the unconditional branch,
cameras = camera_embedding(c2w)). For each prompt, 4 cameras 90° apart (the training layout) are drawn; the 4
views are sampled jointly with DDIM (η = 0, x̂0 clipped, CFG ε_u + s(ε_c − ε_u), `asdcli.priors.ddim`) and
compared with GT renders of the same prompt from the same 4 cameras:

- `mask_iou`: sample foreground (`eval_prior.foreground`) vs GT coverage > 0.5, per view and on average;
- `mask_iou_rotated`: the same samples against the GT of the NEXT view (90° further): a prior that follows its
  cameras scores clearly higher on `mask_iou` than here (symmetric shapes tie, so compare the means);
- `other_prompt_iou`: GT of another prompt from the same cameras vs this GT, the floor;
- `color_spread`: mean over prompts of the largest distance between the 4 views' median foreground colours
  (one object should have one colour in every view);
- `clip_r_at_1` per view (bundled CLIP, retrieval among the evaluated prompts) for samples and for the GT
  renders (`gt_clip_r_at_1`, the ceiling at this resolution).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asdcli.evaluate import ClipScorer
from asdcli.media import contact_sheet, save_png
from asdcli.priors.ddim import ddim_sample
from asdcli.priors.mvdream import MVDreamPrior
from asdcli.render.cameras import sample_training_cameras
from asdcli.shapes.eval_prior import foreground, mask_iou
from asdcli.shapes.gt_render import render_scenes
from asdcli.shapes.prior_data import split_singles_pairs
from asdcli.shapes.train_prior_mv import INFO_FILE, MVPriorTrainConfig, prior_config


class _WithCameras:
    """A prior view for `ddim_sample`, which batches [uncond; cond] and knows nothing about cameras: each call
    gets the cameras [N, 16] once per branch."""

    def __init__(self, prior: Any, cameras: Tensor):
        self.prior, self.cameras = prior, cameras
        self.alphas_cumprod, self.image_size = prior.alphas_cumprod, prior.image_size

    def predict_noise(self, z_t: Tensor, t: Tensor, text: Tensor) -> Tensor:
        reps = z_t.shape[0] // self.cameras.shape[0]
        return self.prior.predict_noise(z_t, t, text, self.cameras.repeat(reps, 1))


def per_view_r_at_1(scorer: Any, prompts: list[str], images: Tensor) -> list[float]:
    """images [P, V, H, W, 3] → R@1 of each view index (retrieval among the P prompts), a list of V floats."""
    p, v = images.shape[:2]
    emb = scorer.image_embeddings(images.reshape(p * v, *images.shape[2:])).view(p, v, -1)
    text = scorer.text_embeddings(prompts)
    hits = torch.einsum("pvd,qd->pvq", emb, text).argmax(dim=-1) == torch.arange(p)[:, None]
    return hits.float().mean(dim=0).tolist()


def color_spread(samples: Tensor, fg: Tensor) -> float:
    """samples [P, V, 3, H, W], fg [P, V, H, W] bool → mean over prompts of the max pairwise distance of the
    views' median foreground colours (views with under 3 foreground pixels are left out)."""
    spreads = []
    for obj, mask in zip(samples, fg, strict=True):
        cols = [img[:, m].median(dim=1).values for img, m in zip(obj, mask, strict=True) if m.sum() >= 3]
        if len(cols) >= 2:
            spreads.append(float(torch.cdist(torch.stack(cols)[None], torch.stack(cols)[None]).max()))
    return sum(spreads) / len(spreads) if spreads else float("nan")


def _mask_ious(fg: Tensor, gt_mask: Tensor, other_mask: Tensor, views: int) -> dict[str, Any]:
    """fg, gt_mask, other_mask [P·V, H, W] bool (object-major) → the IoU figures of the module docstring."""
    p = fg.shape[0] // views
    own = mask_iou(fg, gt_mask).view(p, views)
    rotated_gt = gt_mask.view(p, views, *gt_mask.shape[1:]).roll(-1, dims=1).flatten(0, 1)
    return {"mask_iou": float(own.mean()), "mask_iou_per_view": own.mean(dim=0).tolist(),
            "mask_iou_rotated": float(mask_iou(fg, rotated_gt).mean()),
            "other_prompt_iou": float(mask_iou(other_mask, gt_mask).mean())}


def evaluate_prior_mv(model: str | Path, n_prompts: int = 16, scales=(1.0, 3.0, 7.5), split: str = "test",
                      steps: int = 50, clip: str | None = "bundled:shapes-clip", grid: str | None = None,
                      seed: int = 0) -> dict[str, Any]:
    """Summary per guidance scale (see the module docstring); one 4-view sample per prompt."""
    prior = MVDreamPrior(prior_config(model))
    train_cfg = MVPriorTrainConfig.from_dict(json.loads((Path(model) / INFO_FILE).read_text())["config"])
    singles, pairs = split_singles_pairs(0, split)
    prompts = singles[: n_prompts // 2] + pairs[: n_prompts - n_prompts // 2]  # as eval-prior picks them
    v, size = prior.num_views, prior.image_size
    gen = torch.Generator().manual_seed(seed)
    cams = sample_training_cameras(train_cfg.camera_config(), len(prompts), v, gen)
    gt = render_scenes(prompts, cams, size, size, supersample=2)
    other = render_scenes(prompts[1:] + prompts[:1], cams, size, size, supersample=2)
    cond = prior.conditioning([p for p in prompts for _ in range(v)], cams.elevation, cams.azimuth, cams.c2w)
    scorer = None
    if clip:
        scorer = ClipScorer(clip)
    report: dict[str, Any] = {"model": str(model), "split": split, "prompts": len(prompts), "views": v,
                              "ddim_steps": steps}
    if scorer is not None:
        report["gt_clip_r_at_1"] = per_view_r_at_1(scorer, prompts, gt.rgb.view(len(prompts), v, size, size, 3))
    sheets = []
    for scale in scales:
        imgs = ddim_sample(_WithCameras(prior, cond.cameras), cond.cond, cond.uncond, float(scale), steps,
                           torch.Generator().manual_seed(seed))  # [P·V, 3, S, S]
        fg = foreground(imgs)
        row = _mask_ious(fg, gt.alpha > 0.5, other.alpha > 0.5, v)
        row["color_spread"] = color_spread(imgs.unflatten(0, (len(prompts), v)), fg.unflatten(0, (len(prompts), v)))
        hwc = imgs.permute(0, 2, 3, 1)
        if scorer is not None:
            row["clip_r_at_1"] = per_view_r_at_1(scorer, prompts, hwc.reshape(len(prompts), v, size, size, 3))
        report[f"cfg_{scale:g}"] = row
        sheets.append(hwc)
    if grid:
        tiles = [im for i in range(len(prompts)) for rows in [gt.rgb] + sheets for im in rows[i * v:(i + 1) * v]]
        save_png(contact_sheet(tiles, cols=v * (1 + len(scales))), grid)  # one row per prompt: GT, then each CFG
    return report
