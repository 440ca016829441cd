"""A small triplane SDF generator conditioned on text tokens (CPU-sized; the paper-sized one is
triplane_transformer).

Learned plane tokens cross-attend to the prompt's token states, become three feature planes, and a bias-free
MLP decodes the sampled plane features into an SDF (plus a sphere bias) and colour features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from asdcli.conditioning import TextEmbeddings
from asdcli.config import ZERO_OK
from asdcli.generators import fused
from asdcli.generators.base import FieldOutput, Generator
from asdcli.generators.mlp import (
    ConditionBlock,
    VanillaMLP,
    mlp_channel_major,
    sample_triplanes,
    sample_triplanes_with_slopes,
    sphere_sdf,
    sphere_sdf_grad,
    triplane_gradient,
)


@dataclass(frozen=True)
class TriplaneConfig:
    kind: Literal["triplane"] = "triplane"
    text_dim: int = 32  # width D of the text token states (must match the prior's text encoder)
    plane_res: int = 16  # side R of each feature plane (one learned token per plane texel)
    plane_channels: int = 8  # channels C of each plane; the decoder sees 3·C
    hidden: int = 32  # decoder MLP width
    num_layers: int = field(default=1, metadata=ZERO_OK)  # transformer blocks (cross-attn to text, self-attn, MLP)
    num_heads: int = 2  # attention heads
    width: int = 64  # token width inside the transformer
    sdf_bias: Literal["sphere"] = "sphere"  # analytic SDF added to the decoder's output
    sdf_bias_radius: float = 0.5  # radius of that sphere (world units)
    radius: float = 1.0  # the field lives in [-radius, radius]^3


class TriplaneGenerator(Generator):
    """Tokens [3·R², width] → blocks(text tokens) → LN → Linear(width → C) → planes [P, 3, C, R, R]."""

    Config = TriplaneConfig
    field_type = "sdf"
    text_input = "tokens"

    def __init__(self, cfg: TriplaneConfig):
        super().__init__()
        self.cfg = cfg
        n_tokens = 3 * cfg.plane_res**2
        self.tokens = nn.Parameter(torch.randn(n_tokens, cfg.width) / cfg.width**0.5)
        self.blocks = nn.ModuleList(ConditionBlock(cfg.width, cfg.text_dim, cfg.num_heads)
                                    for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.to_planes = nn.Linear(cfg.width, cfg.plane_channels)
        # The SDF head starts near zero so the initial surface is the bias sphere; the colour head is
        # full-size so gradients still reach the planes and the transformer from the first step.
        self.sdf_head = VanillaMLP(3 * cfg.plane_channels, cfg.hidden, 1, out_scale=0.01)
        self.feature_head = VanillaMLP(3 * cfg.plane_channels, cfg.hidden, 3)

    def forward(self, text: TextEmbeddings, noise: Tensor | None = None) -> Tensor:
        """text.tokens [P, L, text_dim] → planes [P, 3, C, R, R]."""
        ctx = text.tokens
        if ctx.shape[-1] != self.cfg.text_dim:
            raise ValueError(f"triplane generator expects text width {self.cfg.text_dim}, got "
                             f"{ctx.shape[-1]}; set generator.text_dim to the prior's text width")
        x = self.tokens.to(ctx.dtype).expand(ctx.shape[0], -1, -1)
        for block in self.blocks:
            x = block(x, ctx)
        r, c = self.cfg.plane_res, self.cfg.plane_channels
        planes = self.to_planes(self.norm(x))  # [P, 3·R·R, C]
        return planes.view(-1, 3, r, r, c).permute(0, 1, 4, 2, 3).contiguous()

    def query(self, state: Tensor, points: Tensor) -> FieldOutput:
        """planes [P, 3, C, R, R], points [P, N, 3] → sdf [P, N], features [P, N, 3]."""
        feats = sample_triplanes(state, points, self.cfg.radius)
        return FieldOutput(self._sdf(feats, points), self.feature_head(feats))

    def query_with_grad(self, state: Tensor, points: Tensor) -> tuple[FieldOutput, Tensor]:
        """`query` plus d sdf / d points [P, N, 3], written out (renderers call it instead of autograd.grad with
        create_graph): the eikonal term then trains the field with one backward instead of a double backward.
        points must not need a gradient (renderer samples do not). While training on CPU in float32 one fused
        C++ pass (generators/fused.py) computes the same; evaluation renders (no gradient) stay on the eager path,
        so they need no compiler and give the same images as before the kernel."""
        if state.requires_grad and torch.is_grad_enabled() and fused.usable(
                state, points, (self.sdf_head, self.feature_head)):
            sdf, colour, grad = fused.field_with_grad(state, points, self.sdf_head, self.feature_head,
                                                      self.cfg.radius, self.cfg.sdf_bias_radius)
            return FieldOutput(sdf, colour), grad
        feats, slope_u, slope_v = sample_triplanes_with_slopes(state, points, self.cfg.radius)  # [P, 3C, N]
        value, d_feats = mlp_channel_major(self.sdf_head, feats, input_grad=True)
        colour, _ = mlp_channel_major(self.feature_head, feats)
        scale = self.cfg.plane_res / (2 * self.cfg.radius)  # texels per world unit
        grad = triplane_gradient(d_feats, slope_u, slope_v, scale) + sphere_sdf_grad(points)
        sdf = value[:, 0] + sphere_sdf(points, self.cfg.sdf_bias_radius)
        return FieldOutput(sdf, colour.transpose(1, 2).contiguous()), grad

    def prepare_for_training(self, device: torch.device, field_queries: int) -> None:
        """Load the fused field kernel, building it first (once per machine, ~40 s) only for a run long enough to
        repay the build (fused.worth_building); a shorter run uses an earlier build or the eager path."""
        if device.type == "cpu" and fused.enabled() and (self.cfg.plane_channels, self.cfg.hidden) in fused.SIZES:
            fused.prepare(field_queries)

    def query_value(self, state: Tensor, points: Tensor) -> Tensor:
        return self._sdf(sample_triplanes(state, points, self.cfg.radius), points)

    def _sdf(self, feats: Tensor, points: Tensor) -> Tensor:
        return self.sdf_head(feats).squeeze(-1) + sphere_sdf(points, self.cfg.sdf_bias_radius)
