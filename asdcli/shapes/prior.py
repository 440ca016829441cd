"""The ShapesWorld prior (`prior.kind: shapesworld`): a Stable Diffusion prior whose captions follow the rules its
training record (shapesworld_prior.json, written by `python -m asdcli.shapes export-prior`) names.

What it adds to `stable-diffusion`: the view thresholds the prior was trained with become the default view rules,
"next to" pairs are worded as its captions worded them for each camera (`pair_order`), and the text side runs in
plain torch (`bundled_text`) so `asd generate` need not import transformers. Exported folders record that they
need this kind (priors.base.KIND_FILE), so loading one as `stable-diffusion` is refused with a one-line fix.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asdcli.priors.stable_diffusion import Components, StableDiffusionPrior, StableDiffusionPriorConfig
from asdcli.priors.text import TextEncoder, load_clip_text
from asdcli.shapes.bundled import SHAPESWORLD_PRIOR_INFO
from asdcli.shapes.bundled_text import load_bundled_text, runs_bundled_text
from asdcli.shapes.world.grammar import caption_as_seen

KIND = "shapesworld"


@dataclass(frozen=True)
class ShapesWorldPriorConfig(StableDiffusionPriorConfig):
    kind: str = KIND
    model: str = "bundled:shapes-prior"  # the bundled prior, or a folder written by export-prior


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


class ShapesWorldPrior(StableDiffusionPrior):
    """StableDiffusionPrior with ShapesWorld's captioning rules (read from the folder's training record)."""

    Config = ShapesWorldPriorConfig
    pair_order: str = "prompt"  # "left_first": captions name a "next to" pair's left object first

    @classmethod
    def build_text_encoder(cls, cfg: Any, device: torch.device) -> TextEncoder:
        """The text side alone: in plain torch when the folder's CLIP text model allows it (the same
        embeddings; importing transformers would cost more than the rest of `asd generate`)."""
        folder = cls.model_folder(cfg, needs=("text_encoder", "tokenizer"))
        if not cfg.revision and runs_bundled_text(folder):
            return load_bundled_text(folder, cls._encoder_id(cfg), device)
        return load_clip_text(folder, cls._encoder_id(cfg), device)

    def _load_components(self, cfg: Any, device: torch.device, dtype: torch.dtype) -> Components:
        parts = super()._load_components(cfg, device, dtype)
        thresholds, self.pair_order = recorded_captions(parts.folder)
        return dataclasses.replace(parts, trained_view_thresholds=thresholds)

    def caption(self, prompt: str, azimuth: float) -> str:
        """The prompt with its "next to" pair named as the prior's captions named it from `azimuth` degrees."""
        return caption_as_seen(prompt, azimuth, self.pair_order) if self.pair_order != "prompt" else prompt

