"""ShapesWorld prompt libraries: the {"train", "val", "test"} JSON that recipes point at (the paper's format)."""

from __future__ import annotations

import json
from pathlib import Path

from asdcli.shapes.world.grammar import corpus, splits


def build_library(seed: int = 0, corpus_size: int | None = None) -> dict[str, list[str]]:
    """The split of `grammar.splits(seed)`; with corpus_size, train is the nested corpus of that size
    (`grammar.corpus`), while val and test stay whole so every corpus size is scored on the same prompts."""
    library = splits(seed)
    if corpus_size is not None:
        library["train"] = corpus(corpus_size, seed)
    return library


def write_library(path: str | Path, seed: int = 0, corpus_size: int | None = None) -> dict[str, list[str]]:
    """Write the library as JSON to `path` (parent folders created) and return it."""
    library = build_library(seed, corpus_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(library, indent=1) + "\n")
    return library
