"""ShapesWorld's reading of prior folders: whether a folder holds a ShapesWorld-trained prior, and how its
training captions were written (the record export-prior writes). Where the bundled assets are: asdcli/bundled.py.
"""

from __future__ import annotations

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

