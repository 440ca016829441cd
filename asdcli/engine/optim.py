"""Optimizers by name: Adam, AdamW and Adan (the paper's choice for 3DConv-300k and the triplane)."""

from __future__ import annotations

import torch

from asdcli.config import TrainConfig
from asdcli.engine.adan import Adan
from asdcli.errors import UserError


def build_optimizer(cfg: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    groups = [g for g in groups if g["params"]]
    betas = tuple(cfg.betas)
    if cfg.optimizer in ("adam", "adamw"):
        if len(betas) != 2:
            raise UserError(f"train.betas: {cfg.optimizer} takes two betas, got {list(betas)}")
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        return cls(groups, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)

    if len(betas) != 3:
        raise UserError(f"train.betas: adan takes three betas, e.g. [0.98, 0.92, 0.99], got {list(betas)}")
    return Adan(groups, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
