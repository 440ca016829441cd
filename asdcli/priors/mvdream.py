"""MVDream prior: 4 views × 256² of one object denoised jointly, conditioned on text and cameras.

Weights come from either released checkpoint (`sd-v2.1-base-4view.pt`, `sd-v1.5-4view.pt`: LDM names, converted
strictly), a local copy, or a diffusers-format UNet folder. A checkpoint brings its UNet, VAE and text encoder
(`cond_stage_model`: OpenCLIP ViT-H for v2.1, CLIP ViT-L for v1.5, converted by diffusers' single-file functions;
the tokenizer is the CLIP BPE shipped in the package), so the file alone is enough; `text_model` overrides the
text side (and supplies a VAE to a folder without one). The attention layout is not stored in the weights: it
is the known variant's (told apart by block widths and text context) or the recipe's `head_channels` /
`num_heads`. One timestep per batch is shared by all views (`shared_timestep`), and a batch is laid out
view-major within each object: [obj0 view0..view3, obj1 view0..view3, ...].
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from asdcli.bundled import resolve_bundled
from asdcli.conditioning import Conditioning, camera_embedding
from asdcli.errors import ConfigError, UserError
from asdcli.priors.ldm_text import text_encoder_from_checkpoint
from asdcli.priors.mvdream_unet import (
    build_mvdream_unet,
    infer_ldm_unet_config,
    infer_ldm_vae_config,
    ldm_unet_key_map,
    ldm_vae_key_map,
    load_ldm_weights,
    set_num_frames,
)
from asdcli.priors.stable_diffusion import Components, StableDiffusionPrior, prediction_type
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
    # tokenizer + text encoder (+ the VAE when `model` brings none): a hub id or a local diffusers folder; None =
    # the checkpoint's own text encoder (cond_stage_model: OpenCLIP ViT-H for v2.1, CLIP ViT-L for v1.5)
    text_model: str | None = None
    num_views: int = 4  # views that attend to each other (the batch holds whole groups of them)
    image_size: int = 256  # renders are resized to this before VAE encoding (latents are 1/8 of it)
    negative_prompt: str = ""  # the unconditional branch's prompt (the reference uses a long one)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto = fp16 on CUDA, fp32 on CPU
    # Attention heads of an LDM checkpoint (not recorded in its weights). None = the known variant's, told apart
    # by its shapes: sd-v2.1-base-4view (text context 1024) has 64-wide heads, sd-v1.5-4view (context 768) 8
    # heads at every level; any other checkpoint must set one of the two.
    head_channels: int | None = None  # width of every head (heads = channels / head_channels)
    num_heads: int | None = None  # heads at every level (width = channels / num_heads)

    def __post_init__(self) -> None:
        if self.head_channels is not None and self.num_heads is not None:
            raise ConfigError("prior.head_channels and prior.num_heads: set at most one (a checkpoint fixes either "
                              "the width of its heads or their number)")
        for key in ("head_channels", "num_heads"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"prior.{key}: expected a positive integer, got {getattr(self, key)}")
        if self.num_views < 1:
            raise ConfigError(f"prior.num_views: expected at least 1, got {self.num_views}")
        if self.image_size < 8 or self.image_size % 8:
            raise ConfigError(f"prior.image_size: expected a positive multiple of 8, got {self.image_size}")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
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
    config = infer_ldm_unet_config(sd, getattr(cfg, "head_channels", None), getattr(cfg, "num_heads", None))
    unet = build_mvdream_unet(config, cfg.num_views)
    load_ldm_weights(unet, sd, ldm_unet_key_map(unet), "UNet")
    return unet


def vae_from_ldm(sd: dict[str, Tensor], image_size: int) -> nn.Module:
    # lazy: diffusers is heavy: loaded with the prior, not when a recipe is validated
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**infer_ldm_vae_config(sd, image_size))
    load_ldm_weights(vae, sd, ldm_vae_key_map(vae), "VAE")
    return vae


def models_from_checkpoint(sd: dict[str, Tensor], path: Path, cfg: Any) -> tuple[nn.Module, nn.Module | None]:
    """UNet (+ VAE if present) from the original checkpoint's state dict: `model.diffusion_model.*` → UNet,
    `first_stage_model.*` → AutoencoderKL; the text encoder (`cond_stage_model.*`) is read by ldm_text, and
    other entries (the schedule buffers) are not weights we use."""
    unet_sd = _strip(sd, UNET_PREFIX) or (sd if "input_blocks.0.0.weight" in sd else {})
    if not unet_sd:
        raise UserError(f"prior.model: {str(path)!r} has no MVDream UNet weights ({UNET_PREFIX}*)")
    vae_sd = _strip(sd, VAE_PREFIX)
    return unet_from_ldm(unet_sd, cfg), (vae_from_ldm(vae_sd, cfg.image_size) if vae_sd else None)


def _port_heads(config: dict[str, Any], cfg: Any) -> Any:
    """A port that kept the LDM names records its heads in config.json (num_head_channels / num_heads, −1 when
    unused): taken unless the recipe sets one."""
    if getattr(cfg, "head_channels", None) is not None or getattr(cfg, "num_heads", None) is not None:
        return cfg
    width, heads = int(config.get("num_head_channels") or -1), int(config.get("num_heads") or -1)
    if width > 0:
        return dataclasses.replace(cfg, head_channels=width)
    return dataclasses.replace(cfg, num_heads=heads) if heads > 0 else cfg


def load_folder(path: Path, cfg: Any) -> tuple[nn.Module, nn.Module | None]:
    """A diffusers UNet folder (config.json here or in unet/), optionally with vae/ beside unet/. A UNet saved
    with LDM names (ports that kept the original module names) is converted like the checkpoint."""
    # lazy: diffusers is heavy: loaded with the prior, not when a recipe is validated
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
        unet = unet_from_ldm(_read_state_dict(weights[0]), _port_heads(config, cfg))
    vae_dir = path / "vae"
    vae = AutoencoderKL.from_pretrained(str(vae_dir)) if unet_dir != path and vae_dir.is_dir() else None
    return unet, vae


def fetch_checkpoint(cfg: Any) -> Path:
    """The hub checkpoint file (from the cache only when HF_HUB_OFFLINE=1)."""
    # lazy: huggingface_hub only when the checkpoint comes from the hub
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
    # lazy: diffusers is heavy: loaded with the prior, not when a recipe is validated
    from diffusers import DDPMScheduler

    if path.is_dir() and (path / "scheduler" / "scheduler_config.json").is_file():
        return DDPMScheduler.from_pretrained(str(path / "scheduler"))
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012)


class MVDreamPrior(StableDiffusionPrior):
    """Frozen MVDream: multi-view UNet (camera MLP + cross-view self-attention), VAE and text encoder (the
    checkpoint's own, or `text_model`'s)."""

    Config = MVDreamPriorConfig
    shared_timestep = True

    def __init__(self, cfg: Any, device: torch.device | str = torch.device("cpu")) -> None:
        super().__init__(cfg, device)
        self.num_views = int(cfg.num_views)

    @classmethod
    def _source(cls, cfg: Any) -> Path:
        """The checkpoint file or folder `cfg.model` names (bundled, local, or fetched from the hub)."""
        bundled = resolve_bundled(cfg.model)  # bundled:shapes-mv-prior → the package's folder
        path = bundled if bundled is not None else Path(cfg.model).expanduser()
        if path.exists():
            return path
        if looks_like_path(cfg.model):
            raise UserError(f"prior.model: {cfg.model!r} not found; set it to sd-v2.1-base-4view.pt (or "
                            f"sd-v1.5-4view.pt), a diffusers MVDream UNet folder, or the hub repo MVDream/MVDream")
        return fetch_checkpoint(cfg)

    @classmethod
    def _own_text(cls, cfg: Any, sd: dict[str, Tensor], device: torch.device) -> TextEncoder:
        local = Path(cfg.model).expanduser().exists()
        where = str(cfg.model) if local else f"{cfg.model}/{cfg.checkpoint_file}@{cfg.revision or 'main'}"
        return text_encoder_from_checkpoint(sd, f"{where}:cond_stage_model", device)

    @classmethod
    def build_text_encoder(cls, cfg: Any, device: torch.device) -> TextEncoder:
        if cfg.text_model is not None:
            folder = resolve_model_folder(cfg.text_model, None, needs=("text_encoder", "tokenizer"))
            return load_clip_text(folder, str(cfg.text_model), device)
        path = cls._source(cfg)
        if path.is_dir():
            raise UserError(f"prior.text_model: {cfg.model!r} is a folder without the checkpoint's text encoder; "
                            f"set prior.text_model to a diffusers folder or hub id with text_encoder/ and tokenizer/")
        return cls._own_text(cfg, _read_state_dict(path), device)

    def _load_components(self, cfg: Any, device: torch.device, dtype: torch.dtype) -> Components:
        path = self._source(cfg)
        sd = _read_state_dict(path) if path.is_file() else None
        unet, vae = models_from_checkpoint(sd, path, cfg) if sd is not None else load_folder(path, cfg)
        # A 3-channel UNet that brings no VAE denoises images directly: a pixel-space prior (the bundled
        # ShapesWorld 4-view prior), so the text model folder need not hold a vae/.
        pixel = vae is None and int(unet.config.in_channels) == 3
        text, vae = self._text_and_vae(cfg, sd, vae, vae is None and not pixel, device)
        schedule = noise_schedule(path)
        kind = prediction_type(schedule, str(path / "scheduler" / "scheduler_config.json"))
        return Components(text, unet, schedule.alphas_cumprod, vae, prediction_type=kind)

    def _text_and_vae(self, cfg: Any, sd: dict[str, Tensor] | None, vae: nn.Module | None, needs_vae: bool,
                      device: torch.device) -> tuple[TextEncoder, nn.Module | None]:
        """The text encoder (the checkpoint's own, or text_model's) and the VAE (text_model's when needed)."""
        if cfg.text_model is None:
            if sd is None:
                raise UserError(f"prior.text_model: {cfg.model!r} is a folder without a text encoder; set "
                                f"prior.text_model to a diffusers folder or hub id with text_encoder/ and tokenizer/")
            if needs_vae:
                raise UserError(f"prior.text_model: {cfg.model!r} has no VAE (first_stage_model.*); set "
                                f"prior.text_model to a diffusers folder or hub id with vae/, text_encoder/ and "
                                f"tokenizer/, e.g. stabilityai/stable-diffusion-2-1-base")
            return self._own_text(cfg, sd, device), vae
        # lazy: diffusers is heavy: loaded with the prior, not when a recipe is validated
        from diffusers import AutoencoderKL

        folder = resolve_model_folder(cfg.text_model, None,
                                      needs=("text_encoder", "tokenizer") + (("vae",) if needs_vae else ()))
        text = load_clip_text(folder, str(cfg.text_model), device)
        return text, (AutoencoderKL.from_pretrained(str(folder / "vae")) if needs_vae else vae)

    def unet_forward(self, unet: nn.Module, z_t: Tensor, t: Tensor, text: Tensor,
                     cameras: Tensor | None = None) -> Tensor:
        """ε̂ for z_t [N, 4, h, w] with N a multiple of num_views (groups of views of one object), t [N],
        text [N, L, D], cameras [N, 16] (camera_embedding) → [N, 4, h, w] float32."""
        if cameras is None:
            raise ValueError("MVDream needs cameras [N, 16] (Conditioning.cameras / camera_embedding(c2w))")
        if z_t.shape[0] % self.num_views:
            raise ValueError(f"MVDream batch of {z_t.shape[0]} is not a multiple of "
                             f"num_views={self.num_views}")
        return super().unet_forward(unet, z_t, t, text, cameras)

    @property
    def view_dependent(self) -> bool:
        return False  # the cameras tell the UNet the view; prompts carry no suffix

    def conditioning(self, prompts: list[str], elevation: Tensor, azimuth: Tensor,
                     c2w: Tensor) -> Conditioning:
        """cond/uncond [B, L, D] (plain prompts: no view suffixes, no Perp-Neg) and cameras [B, 16]."""
        uncond = self._uncond_tokens()[None].expand(len(prompts), -1, -1).contiguous()
        cond = self.encode_text(list(prompts)).tokens.to(uncond.device)
        return Conditioning(cond=cond, uncond=uncond, cameras=camera_embedding(c2w).to(uncond.device))
