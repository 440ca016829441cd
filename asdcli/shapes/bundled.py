"""ShapesWorld's reading of prior folders: whether a folder holds a ShapesWorld-trained prior, and how its
training captions were written (the record export-prior writes). Where the bundled assets are: asdcli/bundled.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from asdcli.bundled import resolve_bundled

SHAPESWORLD_PRIOR_INFO = ("shapesworld_prior.json", "shapesworld_mv_prior.json")  # written by the prior exports


def is_shapesworld_prior(model: object) -> bool:
    """True for a prior trained on ShapesWorld: a bundled one, or a local folder written by export-prior or
    export-prior-mv (hub ids are never looked up)."""
    if not isinstance(model, str):
        return False
    folder = resolve_bundled(model) or Path(model).expanduser()
    return any((folder / name).is_file() for name in SHAPESWORLD_PRIOR_INFO)


def recorded_captions(folder: Path) -> tuple[tuple[float, float, float] | None, str]:
    """How a 2D prior folder's training captions were written, from the training record that export-prior
    writes: ((front, back, overhead) view thresholds, pair_order). Without a record (e.g. Stable Diffusion
    itself): (None, "prompt"); a record older than pair_order: "prompt"."""
    record = Path(folder) / SHAPESWORLD_PRIOR_INFO[0]
    if not record.is_file():
        return None, "prompt"
    config = json.loads(record.read_text(encoding="utf-8"))["config"]
    thresholds = config["front_threshold"], config["back_threshold"], config["overhead_threshold"]
    return thresholds, config.get("pair_order", "prompt")
