"""MVDream prior: 4 views × 256² of one object denoised jointly, conditioned on text and cameras.

Weights come from the original `sd-v2.1-base-4view.pt` (LDM names, converted strictly), a local copy of it,
or a diffusers-format UNet folder; the tokenizer, text encoder (and the VAE when the checkpoint has none) come
from SD2.1-base (`text_model`). One timestep per batch is shared by all views (`shared_timestep`), and a
batch is laid out view-major within each object: [obj0 view0..view3, obj1 view0..view3, ...].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from asdcli.errors import ConfigError, UserError
from asdcli.priors.base import Conditioning, camera_embedding
from asdcli.priors.mvdream_unet import (
    build_mvdream_unet,
    infer_ldm_unet_config,
    infer_ldm_vae_config,
    ldm_unet_key_map,
    ldm_vae_key_map,
    load_ldm_weights,
    set_num_frames,
)
from asdcli.priors.stable_diffusion import Components, StableDiffusionPrior
from asdcli.priors.text import TextEncoder, hub_offline, load_clip_text, looks_like_path, resolve_model_folder

UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."


@dataclass(frozen=True)
class MVDreamPriorConfig:
    kind: str = "mvdream"
    # the original .pt/.ckpt/.safetensors, a diffusers UNet folder (config.json, or unet/ [+ vae/]), or a
    # hub repo id
    model: str = "MVDream/MVDream"
    checkpoint_file: str = "sd-v2.1-base-4view.pt"  # the file fetched when `model` is a hub repo id
    revision: str | None = None  # hub revision of `model`
    # tokenizer + text encoder (+ the VAE when `model` brings none): a hub id or a local diffusers folder
    text_model: str = "stabilityai/stable-diffusion-2-1-base"
    num_views: int = 4  # views that attend to each other (the batch holds whole groups of them)
    image_size: int = 256  # renders are resized to this before VAE encoding (latents are 1/8 of it)
    negative_prompt: str = ""  # the unconditional branch's prompt (the reference uses a long one)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto = fp16 on CUDA, fp32 on CPU
    head_channels: int = 64  # attention head width of an LDM checkpoint (not recorded in its weights)

    def __post_init__(self) -> None:
        if self.num_views < 1:
            raise ConfigError(f"prior.num_views: expected at least 1, got {self.num_views}")
        if self.image_size < 8 or self.image_size % 8:
            raise ConfigError(f"prior.image_size: expected a positive multiple of 8, got {self.image_size}")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            try:  # memory-map the zip-format checkpoint so its ~5 GB are not read into RAM up front
                sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/format errors of any kind mean the same thing to the user
        raise UserError(f"prior.model: cannot read checkpoint {str(path)!r} ({type(exc).__name__}: "
                        f"{str(exc).strip()[:120]})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]  # Lightning-style checkpoint
    if not isinstance(sd, dict):
        raise UserError(f"prior.model: {str(path)!r} does not hold a state dict")
    return sd


def _strip(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def unet_from_ldm(sd: dict[str, Tensor], cfg: Any) -> nn.Module:
    """A multi-view UNet holding the LDM-named UNet weights `sd` (prefix already stripped)."""
    unet = build_mvdream_unet(infer_ldm_unet_config(sd, cfg.head_channels), cfg.num_views)
    load_ldm_weights(unet, sd, ldm_unet_key_map(unet), "UNet")
    return unet


def vae_from_ldm(sd: dict[str, Tensor], image_size: int) -> nn.Module:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**infer_ldm_vae_config(sd, image_size))
    load_ldm_weights(vae, sd, ldm_vae_key_map(vae), "VAE")
    return vae


def load_checkpoint(path: Path, cfg: Any) -> tuple[nn.Module, nn.Module | None]:
    """UNet (+ VAE if present) from the original checkpoint: `model.diffusion_model.*` → UNet,
    `first_stage_model.*` → AutoencoderKL; other entries (the schedule buffers) are not weights we use."""
    sd = _read_state_dict(path)
    unet_sd = _strip(sd, UNET_PREFIX) or (sd if "input_blocks.0.0.weight" in sd else {})
    if not unet_sd:
        raise UserError(f"prior.model: {str(path)!r} has no MVDream UNet weights ({UNET_PREFIX}*)")
    vae_sd = _strip(sd, VAE_PREFIX)
    return unet_from_ldm(unet_sd, cfg), (vae_from_ldm(vae_sd, cfg.image_size) if vae_sd else None)


def load_folder(path: Path, cfg: Any) -> tuple[nn.Module, nn.Module | None]:
    """A diffusers UNet folder (config.json here or in unet/), optionally with vae/ beside unet/. A UNet saved
    with LDM names (ports that kept the original module names) is converted like the checkpoint."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_dir = path if (path / "config.json").is_file() else path / "unet"
    if not (unet_dir / "config.json").is_file():
        raise UserError(f"prior.model: {str(path)!r} has no UNet (config.json or unet/config.json)")
    config = json.loads((unet_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("_class_name", "UNet2DConditionModel") == "UNet2DConditionModel":
        unet = UNet2DConditionModel.from_pretrained(str(unet_dir))
        if unet.config.class_embed_type != "projection":
            raise UserError(f"prior.model: {str(unet_dir)!r} is a UNet without a camera embedding "
                            f"(class_embed_type 'projection'); it is not an MVDream UNet")
        set_num_frames(unet, cfg.num_views)
    else:
        weights = sorted(unet_dir.glob("*.safetensors")) or sorted(unet_dir.glob("*.bin"))
        if not weights:
            raise UserError(f"prior.model: no weights file in {str(unet_dir)!r}")
        unet = unet_from_ldm(_read_state_dict(weights[0]), cfg)
    vae_dir = path / "vae"
    vae = AutoencoderKL.from_pretrained(str(vae_dir)) if unet_dir != path and vae_dir.is_dir() else None
    return unet, vae


def fetch_checkpoint(cfg: Any) -> Path:
    """The hub checkpoint file (from the cache only when HF_HUB_OFFLINE=1)."""
    from huggingface_hub import hf_hub_download

    offline = hub_offline()
    try:
        return Path(hf_hub_download(cfg.model, cfg.checkpoint_file, revision=cfg.revision,
                                    local_files_only=offline))
    except Exception as exc:  # the hub client raises many types (HTTP, cache miss, bad id): all user-facing
        fix = (f"download it with `huggingface-cli download {cfg.model} {cfg.checkpoint_file}` and set "
               f"prior.model to the downloaded file")
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        where = ("is not cached and the hub is offline (HF_HUB_OFFLINE=1)" if offline
                 else f"could not be fetched ({reason})")
        raise UserError(f"prior.model: {cfg.model!r} ({cfg.checkpoint_file}) {where}; {fix}") from None


def noise_schedule(path: Path) -> Any:
    """The DDPM schedule: the folder's scheduler/ when it has one (the ShapesWorld 4-view prior's linear
    betas), else MVDream's: LDM "linear" betas = SD's scaled_linear 0.00085 → 0.012 over 1000 steps."""
    from diffusers import DDPMScheduler

    if path.is_dir() and (path / "scheduler" / "scheduler_config.json").is_file():
        return DDPMScheduler.from_pretrained(str(path / "scheduler"))
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012)


class MVDreamPrior(StableDiffusionPrior):
    """Frozen MVDream: multi-view UNet (camera MLP + cross-view self-attention), SD2.1 VAE + text encoder."""

    Config = MVDreamPriorConfig
    shared_timestep = True

    def __init__(self, cfg: Any, device: torch.device | str = torch.device("cpu")) -> None:
        super().__init__(cfg, device)
        self.num_views = int(cfg.num_views)

    @classmethod
    def build_text_encoder(cls, cfg: Any, device: torch.device) -> TextEncoder:
        folder = resolve_model_folder(cfg.text_model, None, needs=("text_encoder", "tokenizer"))
        return load_clip_text(folder, str(cfg.text_model), device)

    def _load_components(self, cfg: Any, device: torch.device, dtype: torch.dtype) -> Components:
        from diffusers import AutoencoderKL

        from asdcli.shapes.bundled import resolve_bundled

        bundled = resolve_bundled(cfg.model)  # bundled:shapes-mv-prior → the package's folder
        path = bundled if bundled is not None else Path(cfg.model).expanduser()
        if path.is_file():
            unet, vae = load_checkpoint(path, cfg)
        elif path.is_dir():
            unet, vae = load_folder(path, cfg)
        elif looks_like_path(cfg.model):
            raise UserError(f"prior.model: {cfg.model!r} not found; set it to sd-v2.1-base-4view.pt, a "
                            f"diffusers MVDream UNet folder, or the hub repo MVDream/MVDream")
        else:
            unet, vae = load_checkpoint(fetch_checkpoint(cfg), cfg)
        # A 3-channel UNet that brings no VAE denoises images directly: a pixel-space prior (the bundled
        # ShapesWorld 4-view prior), so the text model folder need not hold a vae/.
        pixel = vae is None and int(unet.config.in_channels) == 3
        needs = ("text_encoder", "tokenizer") + (("vae",) if vae is None and not pixel else ())
        folder = resolve_model_folder(cfg.text_model, None, needs=needs)
        text = load_clip_text(folder, str(cfg.text_model), device)
        if vae is None and not pixel:
            vae = AutoencoderKL.from_pretrained(str(folder / "vae"))
        return Components(text, unet, noise_schedule(path).alphas_cumprod, vae)

    def unet_forward(self, unet: nn.Module, z_t: Tensor, t: Tensor, text: Tensor,
                     cameras: Tensor | None = None) -> Tensor:
        """ε̂ for z_t [N, 4, h, w] with N a multiple of num_views (groups of views of one object), t [N],
        text [N, L, D], cameras [N, 16] (camera_embedding) → [N, 4, h, w]."""
        if cameras is None:
            raise ValueError("MVDream needs cameras [N, 16] (Conditioning.cameras / camera_embedding(c2w))")
        if z_t.shape[0] % self.num_views:
            raise ValueError(f"MVDream batch of {z_t.shape[0]} is not a multiple of "
                             f"num_views={self.num_views}")
        return super().unet_forward(unet, z_t, t, text, cameras)

    def conditioning(self, prompts: list[str], elevation: Tensor, azimuth: Tensor,
                     c2w: Tensor) -> Conditioning:
        """cond/uncond [B, L, D] (plain prompts: no view suffixes, no Perp-Neg) and cameras [B, 16]."""
        uncond = self._uncond_tokens()[None].expand(len(prompts), -1, -1).contiguous()
        cond = self.encode_text(list(prompts)).tokens.to(uncond.device)
        return Conditioning(cond=cond, uncond=uncond, cameras=camera_embedding(c2w).to(uncond.device))
