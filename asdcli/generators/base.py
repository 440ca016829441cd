"""The Generator interface: text embeddings of P prompts → a 3D field per prompt, queried at points."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from asdcli.conditioning import TextEmbeddings


@dataclass
class FieldOutput:
    """Field values at points of P prompts.

    value: [P, N] signed distance (field_type "sdf") or raw density before activation ("density").
    features: [P, N, F] colour features; `rgb` maps them to [0, 1].
    """

    value: Tensor
    features: Tensor


class Generator(nn.Module, abc.ABC):
    """A text-conditioned 3D generator.

    `forward(text, noise)` runs the (expensive) per-prompt part once per step and returns a state; `query(state,
    points)` evaluates the field of every prompt at its own points. A step renders P prompts × V views: the
    renderer passes all V views' samples of a prompt in one `query` call.
    """

    field_type: Literal["sdf", "density"] = "sdf"
    text_input: Literal["pooled", "tokens"] = "pooled"
    noise_dim: int = 0  # size of the Gaussian input (3DConv-Net); 0 = none

    @abc.abstractmethod
    def forward(self, text: TextEmbeddings, noise: Tensor | None = None) -> Any:
        """Per-prompt state for P prompts (text.tokens [P, L, D], text.pooled [P, D]; noise [P, noise_dim])."""

    @abc.abstractmethod
    def query(self, state: Any, points: Tensor) -> FieldOutput:
        """Field of each prompt at points [P, N, 3] (world units, inside [-radius, radius]^3)."""

    def query_value(self, state: Any, points: Tensor) -> Tensor:
        """Only the field value [P, N] (isosurface grids need no colour); generators override it to skip their
        colour head."""
        return self.query(state, points).value

    def rgb(self, features: Tensor) -> Tensor:
        """Colour features [..., F] → RGB [..., 3] in [0, 1]."""
        return features[..., :3].sigmoid()

    def prepare_for_training(self, device: torch.device, field_queries: int) -> None:
        """Called once before the first training step (before any progress bar), with the number of field
        queries the whole run will make (steps × samples per step): build what training needs once per
        machine where the run is long enough to repay it, e.g. a compiled kernel. Nothing by default."""

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser parameter groups; override to give parts their own learning rates."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr, "name": "generator"}]
