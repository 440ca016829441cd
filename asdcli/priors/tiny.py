"""A tiny random Stable-Diffusion-shaped prior built in-process from a seed (tests and CPU smoke runs).

Same seed → identical weights. Pixel space (no VAE) by default: a small UNet2DConditionModel on 3-channel
images, a small random CLIPTextModel, and a byte-level CLIP tokenizer whose vocabulary covers every byte, so
any text tokenises. `save_tiny_sd_folder` writes the same components in diffusers layout, which is how tests
exercise the real `from_pretrained` loading path without downloading anything.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from asdcli.errors import ConfigError
from asdcli.priors.stable_diffusion import Components, StableDiffusionPrior
from asdcli.priors.text import TextEncoder

# Words merged into single tokens so typical prompts (and the view suffixes) fit in a short context.
_WORDS = (
    "a an the of on in with and to by at front side back overhead view red green blue yellow white black "
    "orange purple pink brown gray grey cube sphere cone cylinder torus pyramid box ball ring small large "
    "big tiny tall short wooden metal glass stone shiny matte striped dotted cat dog car chair table house "
    "tree bird horse robot statue lamp cup vase teapot next above below left right top bottom"
).split()
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@dataclass(frozen=True)
class TinyRandomPriorConfig:
    kind: str = "tiny-random"
    seed: int = 0  # weights are a function of the seed (and the sizes below)
    image_size: int = 16  # pixel-space resolution the UNet denoises at
    channels: tuple[int, ...] = (16, 32)  # UNet block widths (one down/up level each)
    text_dim: int = 32  # text-encoder width = UNet cross-attention width
    max_length: int = 16  # text context length L (tokens, with BOS/EOS)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "float32"  # UNet weights; auto = fp16 on CUDA
    negative_prompt: str = ""  # the unconditional branch's prompt
    view_dependent: bool = True  # append ", front/side/back/overhead view" to each image's prompt
    front_threshold: float = 45.0  # |azimuth| below this (degrees) is a front view
    back_threshold: float = 45.0  # |azimuth| above 180 minus this is a back view
    overhead_threshold: float = 60.0  # elevation above this (degrees) is an overhead view
    perp_neg: bool = False  # Perp-Neg: interpolated view prompts + perpendicular negative guidance
    perp_neg_scale: float = -0.5  # effective Perp-Neg weights are scale·f(r)

    def __post_init__(self) -> None:
        if not self.channels or any(c <= 0 or c % 4 for c in self.channels):
            raise ConfigError(f"prior.channels: expected positive multiples of 4, got {list(self.channels)}")
        if self.image_size % 2 ** (len(self.channels) - 1):
            raise ConfigError(f"prior.image_size: {self.image_size} must be divisible by "
                              f"{2 ** (len(self.channels) - 1)} (one halving per extra channel level)")
        if self.text_dim <= 0 or self.text_dim % 4:
            raise ConfigError(f"prior.text_dim: expected a positive multiple of 4, got {self.text_dim}")
        if self.max_length < 3:
            raise ConfigError(f"prior.max_length: expected at least 3 (BOS, a token, EOS), "
                              f"got {self.max_length}")


def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """CLIP-style byte-level BPE: 256 byte symbols, their end-of-word forms, merges for _WORDS, then BOS/EOS
    (EOS has the highest id, as in CLIP, so either pooling rule of CLIPTextModel finds it)."""
    # lazy: tokenizers/transformers/diffusers are heavy: each builder loads what it builds
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    merges: list[str] = []
    for word in _WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        current = symbols[0]
        for sym in symbols[1:]:
            merge = f"{current} {sym}"
            current += sym
            if current not in vocab:
                merges.append(merge)
                vocab[current] = len(vocab)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, merges


def build_tokenizer(max_length: int) -> Any:
    # lazy: transformers is heavy: each builder loads what it builds
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=max_length)


def _groups(channels: tuple[int, ...]) -> int:
    g = math.gcd(*channels)
    return max(d for d in range(1, 9) if g % d == 0)


def build_unet(channels: tuple[int, ...], sample_size: int, text_dim: int, in_channels: int = 3) -> nn.Module:
    # lazy: diffusers is heavy: each builder loads what it builds
    from diffusers import UNet2DConditionModel

    n = len(channels)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=tuple(channels), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=text_dim, attention_head_dim=2, norm_num_groups=_groups(channels))


def build_text_model(tokenizer: Any, text_dim: int, max_length: int) -> nn.Module:
    # lazy: transformers is heavy: each builder loads what it builds
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=2 * text_dim, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config).eval()


def build_vae(image_size: int, seed: int) -> nn.Module:
    """A tiny AutoencoderKL: 3 → 4 latent channels, one halving (latents are image_size / 2)."""
    # lazy: diffusers is heavy: each builder loads what it builds
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                             down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8,
                             sample_size=image_size).eval()


def build_scheduler(prediction_type: str = "epsilon") -> Any:
    # lazy: diffusers is heavy: each builder loads what it builds
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, prediction_type=prediction_type)


def tiny_encoder_id(cfg: Any) -> str:
    return f"tiny-random:seed={cfg.seed}:dim={cfg.text_dim}:len={cfg.max_length}"


def build_tiny_text(cfg: Any, device: torch.device | str = "cpu") -> TextEncoder:
    """The tiny prior's tokenizer + text encoder alone (weights depend only on the seed and sizes)."""
    tokenizer = build_tokenizer(cfg.max_length)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_text_model(tokenizer, cfg.text_dim, cfg.max_length)
    return TextEncoder(tokenizer, model, tiny_encoder_id(cfg), device)


def build_tiny_unet(cfg: Any, in_channels: int = 3, sample_size: int | None = None) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        # A different stream from the text model's, so the two never share initial values by accident.
        torch.manual_seed(cfg.seed + 1_000_003)
        size = sample_size or cfg.image_size
        return build_unet(tuple(cfg.channels), size, cfg.text_dim, in_channels).eval()


class TinyRandomPrior(StableDiffusionPrior):
    """StableDiffusionPrior whose components are built from `cfg.seed` instead of loaded (pixel space)."""

    Config = TinyRandomPriorConfig

    @classmethod
    def build_text_encoder(cls, cfg: Any, device: torch.device) -> TextEncoder:
        return build_tiny_text(cfg, device)

    def _load_components(self, cfg: Any, device: torch.device, dtype: torch.dtype) -> Components:
        alphas = build_scheduler().alphas_cumprod
        return Components(build_tiny_text(cfg, device), build_tiny_unet(cfg), alphas)


def save_tiny_sd_folder(path: str | Path, seed: int = 0, with_vae: bool = False,
                        prediction_type: str = "epsilon", **sizes: Any) -> Path:
    """Write the tiny prior in diffusers layout: unet/, text_encoder/, tokenizer/, scheduler/ (+ vae/).

    `prediction_type` is written to the scheduler config (what the random UNet is declared to output).
    `sizes` are TinyRandomPriorConfig fields (image_size, channels, text_dim, max_length). Without a VAE
    the folder loads (through StableDiffusionPrior) into exactly the weights TinyRandomPrior(seed) builds;
    with one, the UNet works on 4-channel latents at image_size / 2."""
    cfg = TinyRandomPriorConfig(seed=seed, **sizes)
    root = Path(path)
    text = build_tiny_text(cfg)
    text.tokenizer.save_pretrained(str(root / "tokenizer"))
    text.model.save_pretrained(str(root / "text_encoder"))
    if with_vae:
        unet = build_tiny_unet(cfg, in_channels=4, sample_size=cfg.image_size // 2)
        unet.save_pretrained(str(root / "unet"))
        build_vae(cfg.image_size, seed).save_pretrained(str(root / "vae"))
    else:
        build_tiny_unet(cfg).save_pretrained(str(root / "unet"))
    build_scheduler(prediction_type).save_pretrained(str(root / "scheduler"))
    return root
