"""Stable Diffusion 1.x/2.x priors through diffusers, from a hub id or a local diffusers folder.

A folder without vae/ is a pixel-space prior: the UNet denoises images in [−1, 1] directly. With a VAE the
renders are encoded to latents, keeping the gradient. Subclasses reword captions (`caption`) and read their
folder's records (`_load_components`); a folder that records another kind (base.KIND_FILE) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdcli.conditioning import Conditioning, TextEmbeddings, camera_embedding
from asdcli.errors import UserError
from asdcli.priors.base import Prior, check_folder_kind
from asdcli.priors.perp_neg import VIEWS, perp_neg_plan, resolve_view_thresholds, view_directions, view_prompt
from asdcli.priors.text import TextEncoder, load_clip_text, resolve_model_folder

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PREDICTION_TYPES = ("epsilon", "v_prediction")  # what a UNet may output; every loss works on ε (v is converted)


@dataclass(frozen=True)
class StableDiffusionPriorConfig:
    kind: str = "stable-diffusion"
    model: str = "stabilityai/stable-diffusion-2-1-base"  # hub id or local diffusers folder
    revision: str | None = None  # hub revision (branch, tag or commit); ignored for a local folder
    # UNet/VAE weights; auto = fp16 on CUDA, fp32 on CPU (the text encoder always runs in fp32)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    negative_prompt: str = ""  # the unconditional branch's prompt
    view_dependent: bool = True  # append ", front/side/back/overhead view" to each image's prompt
    # The view rules (degrees); None = the model's own: those a prior's folder records it was trained with
    # (e.g. a ShapesWorld prior's), else 45 / 45 / 60 (the reference's).
    front_threshold: float | None = None  # |azimuth| below this is a front view
    back_threshold: float | None = None  # |azimuth| above 180 minus this is a back view
    overhead_threshold: float | None = None  # elevation above this is an overhead view
    perp_neg: bool = False  # Perp-Neg: interpolated view prompts + perpendicular negative guidance
    perp_neg_scale: float = -0.5  # the reference's guidance_perp_neg; effective weights are scale·f(r)
    channels_last: bool = False  # UNet in channels_last memory format (faster on recent GPUs)
    attention_slicing: bool = False  # sliced attention: less memory, slower
    image_size: int | None = None  # renders are resized to this; None = UNet sample_size × VAE factor


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def _to(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Move, and cast only when needed (diffusers warns on every dtype-carrying .to())."""
    module = module.to(device)
    return module if next(module.parameters()).dtype == dtype else module.to(dtype)


@dataclass
class Components:
    """What a prior is assembled from (loaded from a folder, or built in-process by the tiny prior)."""

    text: TextEncoder
    unet: nn.Module
    alphas_cumprod: Tensor  # [T]
    vae: nn.Module | None = None
    trained_view_thresholds: tuple[float, float, float] | None = None  # front/back/overhead the model learned
    prediction_type: str = "epsilon"  # the UNet's output: "epsilon" (ε) or "v_prediction" (v = √ᾱ ε − √(1−ᾱ) x₀)
    folder: Path | None = None  # the model folder it was loaded from (subclasses read their records there)


def prediction_type(scheduler: Any, where: str) -> str:
    """The scheduler config's prediction_type, checked: `where` names the config file in the error."""
    value = getattr(scheduler.config, "prediction_type", "epsilon")
    if value not in PREDICTION_TYPES:
        raise UserError(f"prior.model: {where} has prediction_type {value!r}; asd supports "
                        f"{' and '.join(repr(p) for p in PREDICTION_TYPES)}; use a checkpoint whose UNet predicts "
                        f"noise or velocity")
    return str(value)


class StableDiffusionPrior(Prior):
    """Frozen SD UNet (+ optional VAE) with its DDPM schedule and CLIP text encoder."""

    Config = StableDiffusionPriorConfig

    def __init__(self, cfg: Any, device: torch.device | str = torch.device("cpu")) -> None:
        super().__init__()
        self.cfg = cfg
        device = torch.device(device)
        self.dtype = resolve_dtype(getattr(cfg, "dtype", "auto"), device)
        parts = self._load_components(cfg, device, self.dtype)
        self.text = parts.text
        self.text_model = parts.text.model  # registered so .to(device) moves it with the rest
        self.unet = _to(parts.unet, device, self.dtype)
        self.vae = _to(parts.vae, device, self.dtype) if parts.vae is not None else None
        self.register_buffer("alphas_cumprod", parts.alphas_cumprod.float().to(device), persistent=False)
        self.prediction_type = parts.prediction_type
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        self.image_size = int(cfg.image_size or self.unet.config.sample_size * factor)
        self.view_thresholds = resolve_view_thresholds(cfg, parts.trained_view_thresholds)
        if getattr(cfg, "channels_last", False):
            self.unet.to(memory_format=torch.channels_last)
        if getattr(cfg, "attention_slicing", False):
            self.unet.set_attention_slice("auto")
        self.freeze()
        self._uncond: Tensor | None = None

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def _encoder_id(cls, cfg: Any) -> str:
        return f"{cfg.model}@{cfg.revision}" if cfg.revision else str(cfg.model)

    @classmethod
    def model_folder(cls, cfg: Any, needs: tuple[str, ...]) -> Path:
        """The local diffusers folder of `cfg.model` holding `needs`; UserError when it records that another
        prior kind must load it."""
        folder = resolve_model_folder(cfg.model, cfg.revision, needs=needs)
        check_folder_kind(folder, cfg.kind, cfg.model)
        return folder

    @classmethod
    def build_text_encoder(cls, cfg: Any, device: torch.device) -> TextEncoder:
        """Tokenizer + text encoder only (what `asd generate` needs)."""
        folder = cls.model_folder(cfg, needs=("text_encoder", "tokenizer"))
        return load_clip_text(folder, cls._encoder_id(cfg), device)

    def _load_components(self, cfg: Any, device: torch.device, dtype: torch.dtype) -> Components:
        # lazy: diffusers is heavy: the text side (asd generate) runs without it
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        folder = self.model_folder(cfg, needs=("unet", "text_encoder", "tokenizer", "scheduler"))
        text = load_clip_text(folder, self._encoder_id(cfg), device)
        try:
            unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), torch_dtype=dtype)
            scheduler = DDPMScheduler.from_pretrained(str(folder / "scheduler"))
            vae = None
            if (folder / "vae").is_dir():
                vae = AutoencoderKL.from_pretrained(str(folder / "vae"), torch_dtype=dtype)
        except (OSError, ValueError) as exc:
            raise UserError(f"prior.model: cannot load {cfg.model!r} from {str(folder)!r} "
                            f"({str(exc).strip().splitlines()[0][:160]})") from None
        kind = prediction_type(scheduler, str(folder / "scheduler" / "scheduler_config.json"))
        return Components(text, unet, scheduler.alphas_cumprod, vae, prediction_type=kind, folder=folder)

    # ------------------------------------------------------------------------------------------ images
    def encode(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [0, 1] → z [B, C, h, w] float32, differentiable.

        Resized (bilinear) to image_size and mapped to [−1, 1]; with a VAE, a posterior sample times
        scaling_factor."""
        s = self.image_size
        x = images if images.shape[-2:] == (s, s) else F.interpolate(
            images, size=(s, s), mode="bilinear", align_corners=False)
        x = x * 2.0 - 1.0
        if self.vae is None:
            return x.float()
        z = self.vae.encode(x.to(self.dtype)).latent_dist.sample()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((z - shift) * self.vae.config.scaling_factor).float()

    def unet_forward(self, unet: nn.Module, z_t: Tensor, t: Tensor, text: Tensor,
                     cameras: Tensor | None = None) -> Tensor:
        """ε̂ from `unet` (this prior's UNet or a trainable copy, e.g. a VSD LoRA) with this prior's input
        handling: z_t [N, C, h, w], t [N] (or a scalar), text [N, L, D], cameras [N, 16] → [N, C, h, w]
        float32. Cameras reach only a UNet with a class embedding (a camera-conditioned copy).

        This is the one place a v-prediction UNet's output becomes ε (ε = √ᾱ_t v + √(1−ᾱ_t) z_t), so every
        loss, CFG and Perp-Neg (linear in the output, weights summing to one) and VSD's LoRA (its copy runs
        here too, and is fitted to ε) see noise predictions whatever the parameterisation."""
        out = self._raw_unet(unet, z_t, t, text, cameras).float()
        if self.prediction_type == "v_prediction":
            a = self.alphas_cumprod.to(out.device)[t.to(out.device)].view(-1, *([1] * (out.dim() - 1)))
            out = a.sqrt() * out + (1 - a).sqrt() * z_t.float()
        return out

    def _raw_unet(self, unet: nn.Module, z_t: Tensor, t: Tensor, text: Tensor,
                  cameras: Tensor | None) -> Tensor:
        """The UNet's own output (ε or v, per prediction_type) [N, C, h, w] in its dtype."""
        dtype = next(unet.parameters()).dtype
        kwargs = {}
        class_embed = getattr(getattr(unet, "config", None), "class_embed_type", None)
        if cameras is not None and class_embed is not None:
            kwargs["class_labels"] = cameras.to(dtype)
        if getattr(self.cfg, "channels_last", False):
            z_t = z_t.contiguous(memory_format=torch.channels_last)
        t = t.to(z_t.device)
        return unet(z_t.to(dtype), t, encoder_hidden_states=text.to(dtype), **kwargs).sample

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t: Tensor, text: Tensor, cameras: Tensor | None = None) -> Tensor:
        """ε̂(z_t, t, text): z_t [N, C, h, w], t [N] long, text [N, L, D] → [N, C, h, w] float32."""
        return self.unet_forward(self.unet, z_t, t, text, cameras)

    # ------------------------------------------------------------------------------------------ text
    @property
    def view_dependent(self) -> bool:
        return bool(self.cfg.view_dependent)

    def encode_text(self, prompts: list[str]) -> TextEmbeddings:
        """tokens [N, L, D] and pooled [N, D], float32, no gradient (cached in memory)."""
        return self.text.encode(list(prompts))

    def _uncond_tokens(self) -> Tensor:
        if self._uncond is None:
            self._uncond = self.encode_text([self.cfg.negative_prompt]).tokens[0]
        return self._uncond.to(self.alphas_cumprod.device)

    def conditioning(self, prompts: list[str], elevation: Tensor, azimuth: Tensor,
                     c2w: Tensor) -> Conditioning:
        """cond/uncond [B, L, D] for B images; with perp_neg also perp_neg [B, 2, L, D], weights [B, 2]."""
        cfg = self.cfg
        b = len(prompts)
        uncond = self._uncond_tokens()[None].expand(b, -1, -1)
        dirs = view_directions(elevation, azimuth, *self.view_thresholds)
        prompts = [self.caption(p, a) for p, a in zip(prompts, azimuth.tolist(), strict=True)]
        if cfg.perp_neg:
            out = self._perp_neg_conditioning(prompts, azimuth, dirs, uncond)
            out.cameras = camera_embedding(c2w).to(uncond.device)
            return out
        if cfg.view_dependent:
            texts = [view_prompt(p, int(d)) for p, d in zip(prompts, dirs.tolist(), strict=True)]
        else:
            texts = list(prompts)
        cond = self.encode_text(texts).tokens.to(uncond.device)
        # SD's UNet ignores cameras; VSD's camera-conditioned LoRA reads them.
        return Conditioning(cond=cond, uncond=uncond.contiguous(), cameras=camera_embedding(c2w).to(uncond.device))

    def _perp_neg_conditioning(self, prompts: list[str], azimuth: Tensor, dirs: Tensor,
                               uncond: Tensor) -> Conditioning:
        mix, neg_index, weights = perp_neg_plan(azimuth, dirs, self.cfg.perp_neg_scale)
        device = uncond.device
        # views [B, 4, L, D]: the prompt with each of the four suffixes, in VIEWS order.
        flat = [view_prompt(p, v) for p in prompts for v in range(len(VIEWS))]
        views = self.encode_text(flat).tokens.to(device).view(len(prompts), len(VIEWS), *uncond.shape[1:])
        mix, neg_index = mix.to(device), neg_index.to(device)
        pos = torch.einsum("bv,bvld->bld", mix, views)
        # Index −1 (overhead views) selects the unconditional states; their weights are 0.
        pool = torch.cat([views, uncond[:, None]], dim=1)  # [B, 5, L, D]
        idx = torch.where(neg_index < 0, torch.full_like(neg_index, len(VIEWS)), neg_index)
        negs = torch.gather(pool, 1, idx[:, :, None, None].expand(-1, -1, *pool.shape[2:]))
        return Conditioning(cond=pos, uncond=uncond.contiguous(), perp_neg=negs,
                            perp_neg_weights=weights.to(device))
