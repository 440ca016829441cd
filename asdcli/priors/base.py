"""The Prior interface every loss uses. A prior is a frozen diffusion model plus its noise schedule.

A prior never knows about generators or renderers: it takes images and tensors. Losses build one batch that
holds every branch they need (e.g. ASD's [cond@t, uncond@t, cond@t+]) and call `predict_noise` once.
"""

from __future__ import annotations

import abc

from torch import Tensor, nn

from asdcli.conditioning import Conditioning, TextEmbeddings


class Prior(nn.Module, abc.ABC):
    """Frozen diffusion model + scheduler.

    Subclasses set: `alphas_cumprod` [T] buffer, `image_size` (renders are resized to it before `encode`),
    `shared_timestep` (True for MVDream: one t per batch, shared by the views), `num_views` (views that attend
    to each other, 1 for plain priors).
    """

    shared_timestep: bool = False
    num_views: int = 1
    image_size: int = 64

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

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
