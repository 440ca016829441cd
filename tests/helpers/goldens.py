"""The MVDream golden fixtures (tests/fixtures, made by tests/fixtures/make_goldens.py from the original code):
tiny checkpoints in both released layouts and the outputs the original code computed from them."""

import lzma
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def checkpoint(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"mvdream_tiny_{name}.pt"
    if not path.exists():
        path.write_bytes(lzma.decompress((FIXTURES / f"mvdream_tiny_{name}.pt.xz").read_bytes()))
    return path


def golden(name: str) -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / f"mvdream_tiny_{name}_golden.pt", weights_only=True)
