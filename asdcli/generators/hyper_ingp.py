"""Hyper-iNGP (ATT3D-style): a shared hash grid decoded by per-prompt MLPs made by a text hypernetwork.

The hash grid is shared by all prompts and not text-conditioned; the pooled text embedding goes through
Linear(1024 → 64, no bias) → LayerNorm → SiLU → Linear(64 → 4352), whose output is cut into the weights of two
bias-free MLPs per prompt: SDF 32 → 64 → 1 and colour features 32 → 64 → 3. Paper default ≈ 12.95M parameters,
≈ 13.3M with its text-conditioned background (render.background kind "text-env-mlp"). Unlike the reference,
any number of views per prompt works: the generated weights are applied with one batched matmul per prompt to
all of that prompt's samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

from asdcli.conditioning import TextEmbeddings
from asdcli.generators.base import FieldOutput, Generator
from asdcli.generators.hashgrid import HashGrid, HashGridConfig
from asdcli.generators.mlp import HyperNetwork, batched_mlp, sphere_sdf, split_weights


@dataclass(frozen=True)
class HyperINGPConfig:
    kind: Literal["hyper-ingp"] = "hyper-ingp"
    text_dim: int = 1024  # width of the pooled text embedding (SD2.1's text encoder: 1024)
    grid: HashGridConfig = field(default_factory=HashGridConfig)  # shared hash grid (tcnn defaults)
    hyper_hidden: int = 64  # hypernetwork hidden width
    mlp_hidden: int = 64  # hidden width of the generated per-prompt MLPs
    sdf_bias_radius: float = 0.5  # sdf = MLP + |x| − this
    radius: float = 2.0  # field box [-radius, radius]^3 (the paper's bbox is [-2, 2]^3)


class HyperINGP(Generator):
    """Pooled text [P, D] → per-prompt MLP weights; query: hash grid features → batched MLPs."""

    Config = HyperINGPConfig
    field_type = "sdf"
    text_input = "pooled"

    def __init__(self, cfg: HyperINGPConfig):
        super().__init__()
        self.cfg = cfg
        self.grid = HashGrid(cfg.grid)
        f, h = self.grid.out_dim, cfg.mlp_hidden
        self.shapes = [(f, h), (h, 1), (f, h), (h, 3)]  # sdf MLP, then feature MLP
        self.hyper = HyperNetwork(cfg.text_dim, sum(a * b for a, b in self.shapes), cfg.hyper_hidden)

    def forward(self, text: TextEmbeddings, noise: Tensor | None = None) -> list[Tensor]:
        """text.pooled [P, D] → weights [P, 32, 64], [P, 64, 1], [P, 32, 64], [P, 64, 3]."""
        pooled = text.pooled
        if pooled.shape[-1] != self.cfg.text_dim:
            raise ValueError(f"hyper-ingp expects pooled text width {self.cfg.text_dim}, got "
                             f"{pooled.shape[-1]}; set generator.text_dim")
        return split_weights(self.hyper(pooled.float()), self.shapes)

    def query(self, state: list[Tensor], points: Tensor) -> FieldOutput:
        """points [P, N, 3] → sdf [P, N], features [P, N, 3]."""
        enc = self._encode(points)
        return FieldOutput(self._sdf(enc, state, points), batched_mlp(enc, state[2:]))

    def query_value(self, state: list[Tensor], points: Tensor) -> Tensor:
        return self._sdf(self._encode(points), state, points)

    def _encode(self, points: Tensor) -> Tensor:
        p, n, _ = points.shape
        return self.grid((points.reshape(-1, 3) / self.cfg.radius + 1) / 2).view(p, n, -1)

    def _sdf(self, enc: Tensor, state: list[Tensor], points: Tensor) -> Tensor:
        return batched_mlp(enc, state[:2]).squeeze(-1) + sphere_sdf(points, self.cfg.sdf_bias_radius)
