"""Loading a trained generator for generate / export / eval / validation, and the calls they share:
one text encoding, one generator forward, chunked field queries and orbit renders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asdcli.bundled import BUNDLED, PREFIX, bundled_checkpoint, resolve_bundled
from asdcli.conditioning import TextEmbeddings
from asdcli.config import RunConfig, is_device_name
from asdcli.engine import checkpoint as ckpt_io
from asdcli.engine.components import build_background, build_generator, resolve_device
from asdcli.errors import UserError
from asdcli.preflight import offline_first, text_weights
from asdcli.recipe import load_recipe, read_yaml_mapping
from asdcli.registry import resolve
from asdcli.render.cameras import CameraBatch, orbit_cameras
from asdcli.render.volume import render_chunked


@dataclass
class LoadedModel:
    cfg: RunConfig
    generator: Any
    background: torch.nn.Module
    encode_text: Any  # prompts → TextEmbeddings
    checkpoint: Path
    device: torch.device


def load_text_encoder(cfg: RunConfig, device: torch.device):
    """The prior's text side only (no UNet/VAE): what the generator was trained on, as the prior kind builds it
    (a kind may run it without transformers, e.g. ShapesWorld's)."""
    prior_cls = resolve("prior", cfg.prior.kind, "prior.kind")
    return prior_cls.build_text_encoder(cfg.prior, device)


def load_model(checkpoint: str | Path | None, device: str | None = None) -> LoadedModel:
    """A run/checkpoint directory, `bundled:shapes-generator` (or the bundled ShapesWorld model when None) →
    generator ready to query."""
    checkpoint = _bundled_or_path(checkpoint)
    ckpt = ckpt_io.resolve_checkpoint(checkpoint)
    recipe = ckpt_io.run_dir_of(ckpt) / "recipe.yaml"
    if not recipe.exists():
        raise UserError(f"{ckpt}: no recipe.yaml in its run directory {recipe.parent}; pass the run directory")
    cfg = load_recipe(raw=read_yaml_mapping(recipe))  # damage of any kind is one ConfigError line
    if device is not None and not is_device_name(device):
        raise UserError(f"--device: expected cpu, cuda or cuda:N, got {device!r}")
    if device is None:  # the GPU the run trained on when this machine has one; else the CPU, which always works
        trained = cfg.train.device
        device = trained if trained.startswith("cuda") and torch.cuda.is_available() else "cpu"
    dev = resolve_device(device)

    with offline_first(text_weights(cfg.prior)):  # a missing text encoder: one line, before transformers loads
        text = load_text_encoder(cfg, dev)
    text_dim = int(text.encode([""]).tokens.shape[-1])
    generator = build_generator(cfg, text_dim, dev)
    background = build_background(cfg, text_dim, dev)
    ckpt_io.load_weights_strict(generator, ckpt_io.load_part(ckpt, "generator"), "generator", ckpt)
    ckpt_io.load_weights_strict(background, ckpt_io.load_part(ckpt, "background"), "background", ckpt)
    generator.eval()
    background.eval()
    return LoadedModel(cfg, generator, background, text.encode, ckpt, dev)


def _bundled_or_path(checkpoint: str | Path | None) -> Path:
    """None → the bundled generator; `bundled:NAME` → that asset, which must be a generator run; else the path."""
    if checkpoint is None:
        return bundled_checkpoint()
    name = str(checkpoint)
    if not name.startswith(PREFIX):
        return Path(checkpoint)
    generators = [PREFIX + n for n, fn in BUNDLED.items() if fn is bundled_checkpoint]
    if name[len(PREFIX):] in BUNDLED and name not in generators:
        raise UserError(f"{name} is a prior or CLIP model, not a generator checkpoint; use "
                        f"{' or '.join(generators)} or a run directory")
    return resolve_bundled(name)


@torch.no_grad()
def field_state(model: LoadedModel, prompts: list[str], seed: int = 0) -> tuple[Any, TextEmbeddings]:
    """One text encoding and one generator forward for P prompts."""
    text = model.encode_text(prompts).to(model.device)
    noise = None
    if model.generator.noise_dim:
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(len(prompts), model.generator.noise_dim, generator=gen).to(model.device)
    return model.generator(text, noise), text


def query_fn(model: LoadedModel, state: Any, index: int):
    """points [N, 3] → (value [N], rgb [N, 3]) for prompt `index` of a batched state."""
    one = select_prompt(state, index)

    @torch.no_grad()
    def fn(points: Tensor) -> tuple[Tensor, Tensor]:
        out = model.generator.query(one, points.to(model.device)[None])
        return out.value[0].float(), model.generator.rgb(out.features[0]).float()

    @torch.no_grad()
    def value_only(points: Tensor) -> Tensor:
        return model.generator.query_value(one, points.to(model.device)[None])[0].float()

    fn.value_only = value_only  # isosurface grids read this and skip the colour head
    return fn


def select_prompt(state: Any, index: int) -> Any:
    """The state of prompt `index` of a batched generator state (tensors [P, ...], or dicts/lists/tuples of
    them) → the same structure with tensors [1, ...]: the leading prompt dimension is kept."""
    if torch.is_tensor(state):
        return state[index:index + 1]
    if isinstance(state, dict):
        return {k: select_prompt(v, index) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(select_prompt(v, index) for v in state)
    return state


def eval_cameras(cfg: RunConfig, views: int) -> CameraBatch:
    cam = cfg.render.camera
    return orbit_cameras(views, cam.eval_elevation, cam.eval_distance, cam.eval_fovy)


@torch.no_grad()
def render_orbit(model: LoadedModel, state: Any, text: TextEmbeddings, views: int, resolution: int) -> dict:
    """Orbit renders of every prompt in `state`: rgb/normal/opacity each [P, V, H, W, C] in [0, 1]."""
    P = int(text.pooled.shape[0])
    cams = eval_cameras(model.cfg, views)
    cams = CameraBatch(*(getattr(cams, k).repeat(P, *([1] * (getattr(cams, k).dim() - 1)))
                         for k in ("c2w", "fovy", "elevation", "azimuth", "distance"))).to(model.device)
    out = render_chunked(model.generator, state, cams, resolution, resolution, model.cfg.render,
                         model.background, P, need_normals=True, text=text)
    shape = (P, views, resolution, resolution)
    return {"rgb": out.rgb.reshape(*shape, 3).clamp(0, 1).cpu(),
            "normal": ((out.normal.reshape(*shape, 3) + 1) / 2).clamp(0, 1).cpu(),
            "opacity": out.opacity.reshape(*shape, 1).clamp(0, 1).cpu()}
