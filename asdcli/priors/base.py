"""The Prior interface every loss uses. A prior is a frozen diffusion model plus its noise schedule.

A prior never knows about generators or renderers: it takes images and tensors. Losses build one batch that
holds every branch they need (e.g. ASD's [cond@t, uncond@t, cond@t+]) and call `predict_noise` once.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from asdcli.conditioning import Conditioning, TextEmbeddings
from asdcli.errors import UserError
from asdcli.registry import PRIOR_FOLDER_MARKERS


class PriorConfig(Protocol):
    """What callers read on every prior config (each kind's frozen dataclass has these fields)."""

    kind: str  # the registry name
    negative_prompt: str  # the unconditional branch's prompt


class TextSide(Protocol):
    """A prior's text encoder (`Prior.text`, `Prior.build_text_encoder`): asdcli.priors.text.TextEncoder."""

    encoder_id: str  # names the weights in on-disk cache keys (model id + revision)

    def encode(self, prompts: list[str]) -> TextEmbeddings:
        """tokens [N, L, D], pooled [N, D], float32; memoised in memory (and read from an attached disk cache)."""

    def encode_uncached(self, prompts: list[str], batch_size: int = 64) -> TextEmbeddings:
        """The same embeddings, computed fresh (bulk encoding for the on-disk cache)."""

    def attach_disk_cache(self, cache: Any, suffixes: tuple[str, ...]) -> None:
        """Read `cache` (a TextEmbeddingCache built for prompts × suffixes) before encoding."""


# A model folder may name the prior kind that must load it (written by exports whose folders carry rules a plain
# kind would ignore); loaders compare it with the recipe's prior.kind (`check_folder_kind`).
KIND_FILE = "asd_prior.json"


def write_folder_kind(folder: Path, kind: str) -> None:
    """Record in `folder` that it must be loaded as prior kind `kind`."""
    (Path(folder) / KIND_FILE).write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")


def check_folder_kind(folder: Path, kind: str, model: str) -> None:
    """UserError when `folder` (prior.model = `model`) records a prior kind other than `kind`, in its kind record
    or, for a folder written before the record existed, by a marker file (registry.PRIOR_FOLDER_MARKERS)."""
    record = Path(folder) / KIND_FILE
    if record.is_file():
        try:
            needed = json.loads(record.read_text(encoding="utf-8"))["kind"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"prior.model: {record} is damaged; expected {{\"kind\": NAME}}") from None
    else:
        marked = [k for k, names in PRIOR_FOLDER_MARKERS.items() if any((Path(folder) / n).is_file() for n in names)]
        needed = marked[0] if marked else kind
    if needed != kind:
        raise UserError(f"prior.kind: {model!r} must be loaded as prior.kind: {needed}, not {kind}; set "
                        f"prior.kind: {needed} in the recipe (for a run made before, in its recipe.yaml)")


class Prior(nn.Module, abc.ABC):
    """Frozen diffusion model + scheduler: everything losses, the trainer and `asd generate` use on a prior.

    Subclasses set: `alphas_cumprod` [T] buffer, `image_size` (renders are resized to it before `encode`),
    `shared_timestep` (True for MVDream: one t per batch, shared by the views), `num_views` (views that attend
    to each other, 1 for plain priors), `cfg` (the kind's config, a PriorConfig), `text` (a TextSide) and `unet`
    (the denoiser module VSD copies).
    """

    shared_timestep: bool = False
    num_views: int = 1
    image_size: int = 64
    cfg: PriorConfig
    text: TextSide
    unet: nn.Module

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def negative_prompt(self) -> str:
        """The unconditional branch's prompt."""
        return self.cfg.negative_prompt

    @property
    def view_dependent(self) -> bool:
        """True when conditioning appends the view suffixes (perp_neg.VIEW_SUFFIXES) to prompts, so a text
        cache must hold every prompt with each of them."""
        return False

    @classmethod
    def build_text_encoder(cls, cfg: Any, device: torch.device) -> TextSide:
        """The text side alone (no UNet/VAE; what `asd generate` needs), giving the embeddings `text` gives. Every
        registry kind has one (tests/architecture/test_contracts.py); a prior built only to compute losses (the
        tests' priors) need not."""
        raise NotImplementedError(f"{cls.__name__} does not build its text encoder alone")

    def caption(self, prompt: str, azimuth: float) -> str:
        """The prompt as this prior's training captions worded it for a camera at `azimuth` degrees (before
        any view suffix). Plain priors: the prompt itself."""
        return prompt

    @abc.abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [0, 1] → z [B, C, h, w]; differentiable (the render's gradient flows)."""

    @abc.abstractmethod
    def encode_text(self, prompts: list[str]) -> TextEmbeddings:
        """Token states and pooled vectors of `prompts` (no gradient)."""

    @abc.abstractmethod
    def predict_noise(self, z_t: Tensor, t: Tensor, text: Tensor, cameras: Tensor | None = None) -> Tensor:
        """ε̂(z_t, t, text) for a batch that may hold several branches: z_t [N, C, h, w], t [N] long,
        text [N, L, D], cameras [N, 16] or None → [N, C, h, w] in float32. No gradient, weights frozen."""

    def unet_forward(self, unet: nn.Module, z_t: Tensor, t: Tensor, text: Tensor,
                     cameras: Tensor | None = None) -> Tensor:
        """ε̂ [N, C, h, w] float32 from `unet` (this prior's UNet or a trainable copy, e.g. VSD's LoRA) on
        z_t [N, C, h, w], t [N], text [N, L, D]; gradients flow (the caller picks no_grad). This default calls
        a diffusers UNet in its own dtype and ignores cameras; priors with other input handling override it."""
        dtype = next(unet.parameters()).dtype
        return unet(z_t.to(dtype), t, encoder_hidden_states=text.to(dtype)).sample.float()

    @abc.abstractmethod
    def conditioning(self, prompts: list[str], elevation: Tensor, azimuth: Tensor, c2w: Tensor) -> Conditioning:
        """Conditioning for B images: prompts [B] (one per image), elevation/azimuth [B] degrees, c2w [B, 4, 4]."""

    def add_noise(self, z: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """z_t = √ᾱ_t z + √(1−ᾱ_t) ε, with t [N] broadcast over the image dims."""
        a = self.alphas_cumprod.to(z.device)[t].to(z.dtype).view(-1, *([1] * (z.dim() - 1)))
        return a.sqrt() * z + (1 - a).sqrt() * noise

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()
