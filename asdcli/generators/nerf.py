"""Single-prompt hash-grid NeRF (density field) for `asd distill`; it ignores the text.

Hash grid (tcnn defaults) → bias-free MLPs for raw density (32 → 64 → 1) and colour features (32 → 64 → 3).
The raw density gets Magic3D's blob bias scale·(1 − |x| / std) (scale 10, std 0.5) so training starts from a
soft ball; the renderer applies softplus. Every prompt index sees the same field. Empty space is not skipped
with an occupancy grid: the renderer clips rays to the scene box and can add importance samples
(render.importance_samples), which concentrates samples where the density is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

from asdcli.conditioning import TextEmbeddings
from asdcli.config import ZERO_OK
from asdcli.generators.base import FieldOutput, Generator
from asdcli.generators.hashgrid import HashGrid, HashGridConfig
from asdcli.generators.mlp import VanillaMLP


@dataclass(frozen=True)
class NeRFConfig:
    kind: Literal["nerf"] = "nerf"
    grid: HashGridConfig = field(default_factory=HashGridConfig)  # hash grid (tcnn defaults)
    mlp_hidden: int = 64  # width of the density and feature MLPs
    mlp_layers: int = field(default=1, metadata=ZERO_OK)  # hidden layers of each MLP
    blob_scale: float = 10.0  # density bias at the centre
    blob_std: float = 0.5  # radius where the density bias crosses zero
    radius: float = 1.0  # field box [-radius, radius]^3 (the single-prompt configs use 1)
    encoding_lr_scale: float = 10.0  # the hash grid's learning rate relative to the MLPs' (1e-2 vs 1e-3)


class NeRF(Generator):
    """Text-independent density field: query(points [P, N, 3]) → raw density [P, N], features [P, N, 3]."""

    Config = NeRFConfig
    field_type = "density"
    text_input = "pooled"

    def __init__(self, cfg: NeRFConfig):
        super().__init__()
        self.cfg = cfg
        self.grid = HashGrid(cfg.grid)
        self.density_mlp = VanillaMLP(self.grid.out_dim, cfg.mlp_hidden, 1, cfg.mlp_layers)
        self.feature_mlp = VanillaMLP(self.grid.out_dim, cfg.mlp_hidden, 3, cfg.mlp_layers)

    def forward(self, text: TextEmbeddings | None = None, noise: Tensor | None = None) -> None:
        """No per-prompt state: the field is the same for every prompt."""
        return None

    def query(self, state: None, points: Tensor) -> FieldOutput:
        p, n, _ = points.shape
        enc = self.grid((points.reshape(-1, 3) / self.cfg.radius + 1) / 2).view(p, n, -1)
        dist = (points.square().sum(-1) + 1e-12).sqrt()
        blob = self.cfg.blob_scale * (1 - dist / self.cfg.blob_std)
        return FieldOutput(self.density_mlp(enc).squeeze(-1) + blob, self.feature_mlp(enc))

    def param_groups(self, lr: float) -> list[dict]:
        """The hash grid trains at lr·encoding_lr_scale (the reference: 1e-2 grid, 1e-3 MLPs)."""
        nets = list(self.density_mlp.parameters()) + list(self.feature_mlp.parameters())
        grid_lr = lr * self.cfg.encoding_lr_scale
        return [{"params": list(self.grid.parameters()), "lr": grid_lr, "name": "encoding"},
                {"params": nets, "lr": lr, "name": "generator"}]
