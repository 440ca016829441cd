"""Paper-size parts for the --gpu mode of the suite: an SD 2.1-base-shaped prior with random weights written as a
diffusers folder (no download: the benchmark machines are offline, and speed does not depend on the weights'
values), loaded through the real StableDiffusionPrior path (fp16 on CUDA), and the paper generators.

The UNet, VAE and text encoder have SD 2.1-base's shapes (UNet ≈866M parameters at 64² latents for 512² images,
cross-attention width 1024); the tokenizer is the tiny prior's byte-level one with a 77-token context, so the
text encoder's embedding table is smaller than CLIP's 49408 rows (a lookup, no compute difference).
"""

from __future__ import annotations

from pathlib import Path

SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, norm_num_groups=32)
SD21_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=512, scaling_factor=0.18215)
SD21_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                 max_position_embeddings=77, hidden_act="gelu", projection_dim=512)


def write_random_sd(folder: str | Path, unet: dict | None = None, vae: dict | None = None,
                    text: dict | None = None, dtype: str = "float16") -> Path:
    """A diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) of SD 2.1-base's shapes with random
    weights; the size dicts default to SD 2.1-base and can be shrunk to test this path on a CPU."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from asdcli.priors.tiny import build_tokenizer

    root = Path(folder)
    if (root / "scheduler" / "scheduler_config.json").is_file():
        return root  # written earlier in this session
    torch.manual_seed(0)
    cast = getattr(torch, dtype)
    text_cfg = dict(text or SD21_TEXT)
    tokenizer = build_tokenizer(int(text_cfg["max_position_embeddings"]))
    tokenizer.save_pretrained(str(root / "tokenizer"))
    config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **text_cfg)
    # The text encoder stays fp32: StableDiffusionPrior always runs it in fp32.
    CLIPTextModel(config).save_pretrained(str(root / "text_encoder"))
    UNet2DConditionModel(**(unet or SD21_UNET)).to(cast).save_pretrained(str(root / "unet"))
    AutoencoderKL(**(vae or SD21_VAE)).to(cast).save_pretrained(str(root / "vae"))
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                  beta_end=0.012).save_pretrained(str(root / "scheduler"))
    return root


def magic3d_prompts() -> list[str]:
    """The 15 Magic3D prompts (MG15), from the library shipped in the package."""
    from asdcli.prompts import read_library

    return read_library("magic3d_15")["train"]


def paper_engine_overrides(folder: Path) -> list[str]:
    """sd_hyper_ingp_mg15 on CUDA with the random SD 2.1 folder and MG15 inline (the recipe's library path is
    relative to where `asd train` runs)."""
    import json

    return [f"prior.model={folder}", "prompts.library=null", f"prompts.items={json.dumps(magic3d_prompts())}",
            "train.device=cuda", "train.val_every=0"]


def paper_generators() -> dict:
    """Paper-default generator configs (text width 1024, SD 2.1's); the hash grid picks tcnn when importable."""
    from asdcli.generators.conv3d import Conv3DConfig, Conv3DNet
    from asdcli.generators.hyper_ingp import HyperINGP, HyperINGPConfig
    from asdcli.generators.triplane_transformer import TriplaneTransformer, TriplaneTransformerConfig

    return {"hyper-ingp": lambda: HyperINGP(HyperINGPConfig()),
            "3dconv-net": lambda: Conv3DNet(Conv3DConfig()),
            "triplane-transformer": lambda: TriplaneTransformer(TriplaneTransformerConfig())}
