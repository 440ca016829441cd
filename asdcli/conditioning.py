"""What crosses the layers between text, priors, generators and losses: text embeddings, the conditioning of one
batch of renders, the camera embedding. A ground-floor module (torch and the standard library only), so that
generators, renderers and losses name these types without importing the priors that produce them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TextEmbeddings:
    """Text encoder output for N prompts.

    tokens: [N, L, D] token-level states (what the UNet cross-attends to).
    pooled: [N, D] pooled (end-of-text) state.
    """

    tokens: Tensor
    pooled: Tensor

    def index(self, idx: Tensor | list[int]) -> TextEmbeddings:
        return TextEmbeddings(self.tokens[idx], self.pooled[idx])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextEmbeddings:
        return TextEmbeddings(self.tokens.to(device, dtype), self.pooled.to(device, dtype))


@dataclass
class Conditioning:
    """What the prior is conditioned on for a batch of B rendered images.

    cond:   [B, L, D] token states of each image's (view-dependent) prompt.
    uncond: [B, L, D] token states of the negative (or empty) prompt.
    cameras: [B, 16] camera embedding for camera-conditioned priors (MVDream), else None.
    perp_neg: [B, K, L, D] Perp-Neg negative states and perp_neg_weights [B, K], or None.
    """

    cond: Tensor
    uncond: Tensor
    cameras: Tensor | None = None
    perp_neg: Tensor | None = None
    perp_neg_weights: Tensor | None = None


def camera_embedding(c2w: Tensor) -> Tensor:
    """The 16-value camera input of MVDream (and of VSD's camera-conditioned LoRA): threestudio c2w [B, 4, 4]
    (z-up, columns right/up/backward/position) with the translation scaled to unit length, flattened row-major
    → [B, 16] float32."""
    m = c2w.float().clone()
    t = m[:, :3, 3]
    m[:, :3, 3] = t / (t.norm(dim=-1, keepdim=True) + 1e-8)
    return m.reshape(-1, 16)
