"""Ground-truth metrics of a generator on ShapesWorld prompts, for `asd eval` (DESIGN §8).

Per prompt: `iou` (best over turns about the vertical axis), `iou_blob_baseline` (what a prompt-independent
blob of average size scores against the same scene), `shape_r@1` (1 when the prediction overlaps its own
scene more than every rival scene of the evaluated set) and `color_error` (mean absolute RGB error of the
colour field on the true surface). Prompts outside the ShapesWorld grammar get no ground-truth columns.
"""

from __future__ import annotations

import torch

from asdcli.engine.inference import LoadedModel, field_state, query_fn
from asdcli.mesh.isosurface import density_threshold
from asdcli.render.volume import density
from asdcli.shapes.world.grammar import PromptError, parse_prompt, unknown_words
from asdcli.shapes.world.metrics import (
    blob_occupancy,
    color_error,
    gt_occupancy,
    iou,
    iou_matrix,
    shape_hits_from_matrix,
)
from asdcli.shapes.world.scenes import grid_points


def _specs(prompts: list[str]):
    if any(unknown_words(p) for p in prompts):
        return None
    try:
        return [parse_prompt(p) for p in prompts]
    except PromptError:
        return None


@torch.no_grad()
def predicted_value(model: LoadedModel, state, index: int, res: int, radius: float = 1.0) -> torch.Tensor:
    """[R, R, R] field value (SDF or raw density) of prompt `index` on the evaluation grid."""
    fn = query_fn(model, state, index)
    pts = grid_points(res, radius).reshape(-1, 3)
    return torch.cat([fn(chunk)[0].cpu() for chunk in pts.split(1 << 18)]).reshape(res, res, res)


def predicted_occupancy(model: LoadedModel, state, index: int, res: int, radius: float = 1.0) -> torch.Tensor:
    """[R, R, R] bool occupancy of prompt `index`: SDF < 0, or density above its automatic surface level."""
    value = predicted_value(model, state, index, res, radius)
    if model.generator.field_type == "sdf":
        return value < 0
    sigma = density(value, "density", model.cfg.render.inv_std)
    level = density_threshold(sigma.numpy(), 2.0 * radius / (res - 1))
    return sigma > level


def ground_truth_metrics(model: LoadedModel, prompts: list[str], res: int = 64, batch: int = 8) -> dict:
    """Columns {iou, iou_blob_baseline, shape_r@1, color_error}, each a list over prompts, or {}."""
    specs = _specs(prompts)
    if specs is None:
        return {}
    occs, colors = [], []
    for start in range(0, len(prompts), batch):
        part = prompts[start:start + batch]
        state, _ = field_state(model, part, seed=model.cfg.seed)
        for i, spec in enumerate(specs[start:start + batch]):
            occs.append(predicted_occupancy(model, state, i, res))
            colour_fn = query_fn(model, state, i)
            colors.append(color_error(lambda pts, f=colour_fn: f(pts)[1], spec, n=2048))
    gt = gt_occupancy(specs, res)
    ious = iou_matrix(occs, gt)
    blob = iou(blob_occupancy(res)[None], gt)
    return {"iou": ious.diagonal().tolist(), "iou_blob_baseline": blob.tolist(),
            "shape_r@1": shape_hits_from_matrix(ious, specs).float().tolist(), "color_error": colors}
