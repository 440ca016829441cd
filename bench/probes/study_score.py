"""Scores of one method-study checkpoint, on a train sample and a held-out test sample fixed for every arm.

`asd eval`'s own command body gives shape_r@1 (retrieval among the evaluated prompts: 64 each, chance 1/64),
IoU next to the blob baseline, colour error and the bundled CLIP's R@1 (on the test sample; on the train sample
the same ground-truth columns come from the function `asd eval` calls, without the orbit renders that only CLIP
needs and that cost most of the time). On top, from occupancy grids at 32³:

- collapsed: the fraction of prompts whose shape is empty (< 0.1 % of the box) or fills it (> 50 %);
- diversity: 1 − the mean best-rotation IoU between different prompts' shapes (0: every prompt the same
  shape), next to the same figure for the true scenes (`gt_diversity`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

EMPTY_FILL, FULL_FILL = 1e-3, 0.5
SAMPLE_SEED = 0


def train_sample(n: int) -> list[str]:
    """The first n prompts of the 64-prompt corpus: train prompts of every arm (the corpora are nested)."""
    from asdcli.shapes.world.library import build_library

    return build_library(0, 64)["train"][:n]


def sample_prompts(corpus: int | None, split: str, n: int, seed: int) -> list[str]:
    """Up to n prompts of a split (train = the nested corpus of that size), seeded, in the split's order (the
    seeded sets of docs/notebook.md §9b–§9k are `sample_prompts(None, split, 32, seed)`)."""
    from asdcli.shapes.world.library import build_library

    items = build_library(0, corpus)[split]
    if len(items) <= n:
        return list(items)
    keep = set(random.Random(f"study-{split}-{seed}").sample(range(len(items)), n))
    return [p for i, p in enumerate(items) if i in keep]


def test_sample(n: int) -> list[str]:
    """n held-out test prompts, the same for every arm and seed (seeds vary the training only)."""
    return sample_prompts(None, "test", n, SAMPLE_SEED)


def shape_stats(model, prompts: list[str], res: int = 32) -> dict[str, float]:
    """Collapse and diversity of a loaded model's shapes for `prompts` (see the module docstring)."""
    import torch

    from asdcli.engine.inference import field_state
    from asdcli.shapes.evaluation import predicted_occupancy
    from asdcli.shapes.world.grammar import parse_prompt
    from asdcli.shapes.world.metrics import gt_occupancy, iou_matrix

    occs = []
    for start in range(0, len(prompts), 8):
        part = prompts[start:start + 8]
        state, _ = field_state(model, part, seed=model.cfg.seed)
        occs += [predicted_occupancy(model, state, i, res) for i in range(len(part))]
    fill = torch.stack([o.float().mean() for o in occs])
    off = ~torch.eye(len(occs), dtype=torch.bool)

    def diversity(grids) -> float:
        if len(grids) < 2:
            return float("nan")
        return 1.0 - float(iou_matrix(list(grids), torch.stack(list(grids)))[off].mean())

    return {"fill": float(fill.mean()), "empty": float((fill < EMPTY_FILL).float().mean()),
            "full": float((fill > FULL_FILL).float().mean()),
            "collapsed": float(((fill < EMPTY_FILL) | (fill > FULL_FILL)).float().mean()),
            "diversity": diversity(occs),
            "gt_diversity": diversity(list(gt_occupancy([parse_prompt(p) for p in prompts], res)))}


def eval_summary(step_dir: Path, prompts: list[str], folder: Path, name: str, args) -> dict[str, Any]:
    """`asd eval` on the prompts (as a prompt file) → its summary: means over the prompts."""
    import json

    from asdcli.commands import eval_command

    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"prompts_{name}.txt"
    file.write_text("\n".join(prompts) + "\n")
    out = folder / f"eval_{name}.json"
    clip = None if args.clip in ("none", "bundled") else args.clip
    eval_command(checkpoint=step_dir, prompts=file, split="test", clip_score=args.clip != "none", clip_model=clip,
                 views=args.views, resolution=args.resolution, json_path=out, csv_path=None, sheet=None,
                 device=args.device, quiet=True)
    return json.loads(out.read_text())["summary"]


def ground_truth(model, prompts: list[str]) -> dict[str, Any]:
    """`asd eval`'s ground-truth columns without its renders (they serve CLIP only): the means of the same
    `ground_truth_metrics` its command body calls."""
    from asdcli.shapes.evaluation import ground_truth_metrics

    cols = ground_truth_metrics(model, prompts)
    return {"n_prompts": len(prompts), **{k: sum(v) / len(v) for k, v in cols.items()}}


def score_checkpoint(step_dir: Path, arm, args) -> dict[str, Any]:
    """{"train": {...}, "test": {...}, "seconds"}: ground-truth metrics and shape stats on both samples, and the
    bundled CLIP's R@1 through `asd eval` on the test sample (on train too with --clip-train 1): its orbit
    renders are most of the scoring time (3.4 CPU s a prompt at 8 views of 64², docs/study/DESIGN.md)."""
    import time

    from asdcli.engine.inference import load_model

    t0 = time.time()
    folder = step_dir.parent.parent.parent / "eval" / step_dir.name
    model = load_model(step_dir, args.device)
    out: dict[str, Any] = {}
    for split, prompts in (("train", train_sample(args.train_sample)), ("test", test_sample(args.test_sample))):
        clip = args.clip != "none" and (split == "test" or args.clip_train)
        metrics = eval_summary(step_dir, prompts, folder, split, args) if clip else ground_truth(model, prompts)
        out[split] = {**metrics, **shape_stats(model, prompts)}
    out["seconds"] = time.time() - t0
    return out
