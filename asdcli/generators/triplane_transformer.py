"""Triplane-Transformer: learned triplane tokens cross-attending to the prompt's text tokens (OpenLRM-style).

3·32·32 learned tokens (width 768, N(0, 1)/√768) pass 12 blocks of [cross-attention to the text tokens
(77×1024), self-attention, MLP 4×] with pre-LayerNorms (eps 1e-6), a final LayerNorm, then each plane's 32×32
token grid goes through ConvTranspose2d(768 → 32, kernel 2, stride 2, no bias) → triplanes [P, 3, 32, 64, 64].
Query: bilinear samples of the xy, xz, zy planes, concatenated (96) → bias-free MLPs 96→64→64→1 (sdf, plus
|x| − 0.8) and 96→64→64→3. ≈120.6M parameters at the default sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from asdcli.conditioning import TextEmbeddings
from asdcli.config import ZERO_OK
from asdcli.generators.base import FieldOutput, Generator
from asdcli.generators.mlp import ConditionBlock, VanillaMLP, sample_triplanes, sphere_sdf


@dataclass(frozen=True)
class TriplaneTransformerConfig:
    kind: Literal["triplane-transformer"] = "triplane-transformer"
    text_dim: int = 1024  # width of the text token states (condition_dim)
    inner_dim: int = 768  # token width
    num_layers: int = field(default=12, metadata=ZERO_OK)  # transformer blocks
    num_heads: int = 16  # attention heads (head width 48)
    mlp_ratio: float = 4.0  # block MLP hidden width / inner_dim
    low_res: int = 32  # token grid side per plane
    high_res: int = 64  # triplane side after the transposed convolution (a multiple of low_res)
    triplane_dim: int = 32  # channels per plane
    mlp_hidden: int = 64  # decoder MLP width
    mlp_layers: int = field(default=2, metadata=ZERO_OK)  # decoder hidden layers
    sdf_bias_radius: float = 0.8  # sdf = MLP + |x| − this
    radius: float = 2.0  # field box [-radius, radius]^3


class TriplaneTransformer(Generator):
    """Text tokens [P, L, D] → triplanes [P, 3, C, high_res, high_res]."""

    Config = TriplaneTransformerConfig
    field_type = "sdf"
    text_input = "tokens"

    def __init__(self, cfg: TriplaneTransformerConfig):
        super().__init__()
        if cfg.high_res % cfg.low_res:
            raise ValueError(f"triplane-transformer high_res {cfg.high_res} must be a multiple of low_res "
                             f"{cfg.low_res}")
        self.cfg = cfg
        self.pos_embed = nn.Parameter(torch.randn(3 * cfg.low_res**2, cfg.inner_dim) / cfg.inner_dim**0.5)
        self.blocks = nn.ModuleList(ConditionBlock(cfg.inner_dim, cfg.text_dim, cfg.num_heads, cfg.mlp_ratio)
                                    for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.inner_dim, eps=1e-6)
        up = cfg.high_res // cfg.low_res
        self.deconv = nn.ConvTranspose2d(cfg.inner_dim, cfg.triplane_dim, up, stride=up, bias=False)
        self.sdf_mlp = VanillaMLP(3 * cfg.triplane_dim, cfg.mlp_hidden, 1, cfg.mlp_layers)
        self.feature_mlp = VanillaMLP(3 * cfg.triplane_dim, cfg.mlp_hidden, 3, cfg.mlp_layers)

    def forward(self, text: TextEmbeddings, noise: Tensor | None = None) -> Tensor:
        """text.tokens [P, L, text_dim] → triplanes [P, 3, triplane_dim, high_res, high_res]."""
        ctx = text.tokens
        if ctx.shape[-1] != self.cfg.text_dim:
            raise ValueError(f"triplane-transformer expects text width {self.cfg.text_dim}, got "
                             f"{ctx.shape[-1]}; set generator.text_dim")
        p, r, d = ctx.shape[0], self.cfg.low_res, self.cfg.inner_dim
        x = self.pos_embed.to(ctx.dtype).expand(p, -1, -1)
        for block in self.blocks:
            x = block(x, ctx)
        x = self.norm(x).view(p * 3, r, r, d).permute(0, 3, 1, 2)  # [P·3, D, r, r]
        planes = self.deconv(x)
        return planes.view(p, 3, *planes.shape[1:])

    def rgb(self, features: Tensor) -> Tensor:
        """The reference's "sigmoid-mipnerf" colour: σ(x)·1.002 − 0.001, so 0 and 1 are reachable."""
        return features[..., :3].sigmoid() * 1.002 - 0.001

    def query(self, state: Tensor, points: Tensor) -> FieldOutput:
        """triplanes [P, 3, C, R, R], points [P, N, 3] → sdf [P, N], features [P, N, 3]."""
        feats = sample_triplanes(state, points.to(state.dtype), self.cfg.radius)
        return FieldOutput(self._sdf(feats, points), self.feature_mlp(feats))

    def query_value(self, state: Tensor, points: Tensor) -> Tensor:
        return self._sdf(sample_triplanes(state, points.to(state.dtype), self.cfg.radius), points)

    def _sdf(self, feats: Tensor, points: Tensor) -> Tensor:
        return self.sdf_mlp(feats).squeeze(-1) + sphere_sdf(points, self.cfg.sdf_bias_radius)
