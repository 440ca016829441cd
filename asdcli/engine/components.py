"""Building the parts a recipe names: device, prior, generator, background, loss. Shared by every command."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from asdcli.conditioning import TextEmbeddings
from asdcli.config import RunConfig
from asdcli.errors import UserError
from asdcli.registry import build
from asdcli.render.background import build_background as _build


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


def build_generator(cfg: RunConfig, text_dim: int, device: torch.device) -> Any:
    """The generator of `cfg`, checked against the text encoder's width (never silently adapted)."""
    want = getattr(cfg.generator, "text_dim", None)
    if want is not None and want != text_dim:
        raise UserError(f"generator.text_dim: {want} but the prior's text encoder gives {text_dim}-d states; "
                        f"set generator.text_dim={text_dim}")
    return build("generator", cfg.generator).to(device)


def build_background(cfg: RunConfig, text_dim: int, device: torch.device) -> torch.nn.Module:
    return _build(cfg.render, text_dim).to(device)


def text_dim_of(embed: TextEmbeddings) -> int:
    return int(embed.tokens.shape[-1])


@dataclass
class TrainParts:
    prior: Any
    generator: Any
    background: torch.nn.Module
    loss: Any
    text_dim: int


def build_train_parts(cfg: RunConfig, device: torch.device) -> TrainParts:
    """Prior first (frozen), then the trainable parts from a fixed seed so every rank starts identical."""
    prior = build("prior", cfg.prior, device=device)
    text_dim = text_dim_of(prior.encode_text([""]))
    torch.manual_seed(cfg.seed)
    generator = build_generator(cfg, text_dim, device)
    background = build_background(cfg, text_dim, device)
    loss = build("loss", cfg.loss, prior=prior).to(device)
    return TrainParts(prior, generator, background, loss, text_dim)
