"""Multiresolution hash encoding (Instant-NGP) in pure PyTorch, with tiny-cuda-nn as an optional backend.

The config keys are tcnn's HashGrid keys and the parameter layout is tcnn's (levels one after another, each a
[size_l, F] table, size_l = min(next multiple of 8 of res_l³, 2^log2_hashmap_size)), so parameter counts match
the reference's and weights can move between the backends. Per level l: scale_l = base·per_level_scale^l − 1,
res_l = ⌈scale_l⌉ + 1, grid position = x·scale_l + 0.5; a level whose dense grid fits its table is indexed
directly (x + y·res + z·res²), a finer one by the XOR hash with primes (1, 2654435761, 805459861) in uint32
arithmetic (int64 tensors masked to 32 bits); both are taken modulo the table size. Trilinear interpolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

_PRIMES = (1, 2654435761, 805459861)
_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class HashGridConfig:
    n_levels: int = 16  # resolution levels
    n_features_per_level: int = 2  # features per table entry; the encoding has n_levels·this outputs
    log2_hashmap_size: int = 19  # each level's table holds at most 2^this entries
    base_resolution: int = 16  # coarsest grid resolution
    per_level_scale: float = 1.4473  # resolution growth per level (1.4473 → finest ≈ 4096 for 16 levels)
    backend: Literal["auto", "torch", "tcnn"] = "auto"  # auto: tinycudann if importable and CUDA is available


def _tcnn_module() -> Any | None:
    try:
        import tinycudann
    except (ImportError, OSError):  # a broken CUDA build raises at import time too
        return None
    return tinycudann


def level_layout(cfg: HashGridConfig) -> list[tuple[float, int, int, bool]]:
    """(scale, resolution, table size, hashed) for each level, computed in float32 as tcnn does."""
    levels, cap = [], 1 << cfg.log2_hashmap_size
    log2_scale = np.log2(np.float32(cfg.per_level_scale))  # numpy, not torch: works under a meta device
    for lvl in range(cfg.n_levels):
        scale = float(np.exp2(np.float32(lvl) * log2_scale) * np.float32(cfg.base_resolution) - np.float32(1))
        res = math.ceil(scale) + 1
        dense = res**3
        size = min(-(-dense // 8) * 8, cap)
        levels.append((scale, res, size, dense > size))
    return levels


class HashGrid(nn.Module):
    """x [N, 3] in [0, 1]^3 → features [N, n_levels·n_features_per_level] (float32)."""

    def __init__(self, cfg: HashGridConfig):
        super().__init__()
        self.cfg = cfg
        self.levels = level_layout(cfg)
        self.out_dim = cfg.n_levels * cfg.n_features_per_level
        self.offsets = [0]
        for _, _, size, _ in self.levels:
            self.offsets.append(self.offsets[-1] + size)
        tcnn = _tcnn_module() if cfg.backend != "torch" else None
        if cfg.backend == "tcnn" and (tcnn is None or not torch.cuda.is_available()):
            raise RuntimeError("hash grid backend 'tcnn' needs tinycudann and CUDA; use torch or auto")
        self.backend = "tcnn" if tcnn is not None and torch.cuda.is_available() else "torch"
        if self.backend == "tcnn":
            self.tcnn = tcnn.Encoding(3, self.tcnn_config(), dtype=torch.float32)
        else:
            # tcnn's initialisation: U(-1e-4, 1e-4).
            table = torch.empty(self.offsets[-1], cfg.n_features_per_level).uniform_(-1e-4, 1e-4)
            self.table = nn.Parameter(table)
        corners = torch.tensor([[(c >> d) & 1 for d in range(3)] for c in range(8)], dtype=torch.int64)
        self.register_buffer("corners", corners, persistent=False)  # [8, 3]
        self._register_load_state_dict_pre_hook(self._convert_state)

    def tcnn_config(self) -> dict:
        c = self.cfg
        return {"otype": "HashGrid", "n_levels": c.n_levels, "n_features_per_level": c.n_features_per_level,
                "log2_hashmap_size": c.log2_hashmap_size, "base_resolution": c.base_resolution,
                "per_level_scale": c.per_level_scale}

    def _convert_state(self, state: dict, prefix: str, *args: Any) -> None:
        """Accept checkpoints written by the other backend (same layout, different key and shape)."""
        table, flat = prefix + "table", prefix + "tcnn.params"
        if self.backend == "tcnn" and table in state:
            state[flat] = state.pop(table).reshape(-1)
        elif self.backend == "torch" and flat in state:
            state[table] = state.pop(flat).reshape(-1, self.cfg.n_features_per_level)

    def forward(self, x: Tensor) -> Tensor:
        """x [N, 3] in [0, 1]^3 (clamped) → [N, n_levels·F]."""
        x = x.clamp(0.0, 1.0)
        if self.backend == "tcnn":
            if not x.is_cuda:
                raise RuntimeError("this hash grid runs on tinycudann (CUDA only); set its backend to torch "
                                   "to evaluate it on the CPU")
            return self.tcnn(x).float()
        x = x.float()
        # One gather for all levels: the gradient of index_select materialises a table-sized buffer, so one
        # call instead of one per level saves 15 table-sized fills and additions in the backward pass.
        idx, w = zip(*(self._level(x, lvl) for lvl in range(len(self.levels))), strict=True)
        f = self.cfg.n_features_per_level
        feats = self.table.index_select(0, torch.cat(idx)).view(len(idx), -1, 8, f)
        out = (torch.stack(w) * feats).sum(dim=2)  # [L, N, F]
        return out.permute(1, 0, 2).reshape(x.shape[0], -1)

    def _level(self, x: Tensor, lvl: int) -> tuple[Tensor, Tensor]:
        """Table rows [N·8] of the 8 cell corners of each point at one level and their trilinear weights
        [N, 8, 1]. Separable: indices and weights are outer combinations of 2 per axis (cell, cell + 1),
        several times cheaper than building [N, 8, 3] corner coordinates."""
        scale, res, size, hashed = self.levels[lvl]
        pos = x * scale + 0.5
        cell = pos.floor()
        frac = pos - cell  # the floor has no gradient, so d(frac)/dx = scale: analytic normals work
        c = cell.long()
        ax = [torch.stack([c[:, d], c[:, d] + 1], dim=1) for d in range(3)]  # per axis [N, 2]
        wt = [torch.stack([1 - frac[:, d], frac[:, d]], dim=1) for d in range(3)]
        if hashed:
            hx, hy, hz = ((a * p) & _MASK32 for a, p in zip(ax, _PRIMES, strict=True))
            idx = hx[:, :, None, None] ^ hy[:, None, :, None] ^ hz[:, None, None, :]
        else:
            idx = ax[0][:, :, None, None] + ax[1][:, None, :, None] * res + ax[2][:, None, None, :] * res**2
        w = wt[0][:, :, None, None] * wt[1][:, None, :, None] * wt[2][:, None, None, :]
        # int32 rows (the table has < 2^31 rows) halve the index memory autograd keeps for the backward pass.
        return (idx % size + self.offsets[lvl]).view(-1).int(), w.reshape(-1, 8, 1)
