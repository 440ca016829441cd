"""Dress rehearsal at full size (slow, CPU): random-weight checkpoints in the exact published layouts (a Stable
Diffusion 2.1-base diffusers folder written from its published configs; a full-size MVDream checkpoint in the
original LDM key layout), then the paper recipes train 2 steps against them, and generate / eval read the
results, all through the CLI in fresh processes with the hub offline. What a GPU user's first run does, minus
the download.

    pytest -m slow tests/cli/test_dress_rehearsal.py -s     # prints each command's time and the peak memory

The priors stay full size (865M-parameter UNets, the 340M-parameter text encoder, the 83M-parameter VAE), and
so do the generators. What is cut, to fit minutes and memory on a shared 2-core CPU: renders of 32² with 64 + 32
samples a ray (the recipes: 64² with 128 + 64), Stable Diffusion fed 256² renders instead of 512² (latents
32² instead of 64²: the VAE's backward pass at 512² alone holds several GB), the Triplane-Transformer's token grid
16² instead of 32² a plane (768 tokens instead of 3,072: with 3,072 the MVDream run grew past 13.6 GB resident
and was stopped; 119.1M parameters instead of 120.6M), and validation (one prompt, two views).
"""

import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# stabilityai/stable-diffusion-2-1-base, as published (unet/, text_encoder/, vae/, scheduler/ configs)
SD21_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=1024,
                 use_linear_projection=True, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
                 flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1,
                 center_input_sample=False, dual_cross_attention=False)
SD21_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                 num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
                 layer_norm_eps=1e-5, initializer_range=0.02, initializer_factor=1.0, attention_dropout=0.0,
                 dropout=0.0, bos_token_id=0, eos_token_id=2, pad_token_id=1)
SD21_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu", norm_num_groups=32, sample_size=768,
                scaling_factor=0.18215)
SD21_SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.8.0", "beta_start": 0.00085,
                  "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
                  "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
                  "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}


def build_sd21_base(root: Path) -> Path:
    """Random SD 2.1-base weights in its diffusers layout. The tokenizer is CLIP's byte-level BPE with no
    merges (514 tokens; the text model keeps the published 49,408-row embedding)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from asdcli.clip_model import write_byte_vocab

    torch.manual_seed(0)
    write_byte_vocab(root / "tokenizer")
    CLIPTokenizer.from_pretrained(str(root / "tokenizer"), model_max_length=77).save_pretrained(
        str(root / "tokenizer"))
    for name, build in (("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**SD21_TEXT))),
                        ("vae", lambda: AutoencoderKL(**SD21_VAE)),
                        ("unet", lambda: UNet2DConditionModel(**SD21_UNET))):
        model = build()
        model.save_pretrained(str(root / name), safe_serialization=True)
        del model
        gc.collect()
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD21_SCHEDULER, indent=2))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.8.0",
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    return root


def build_mvdream_checkpoint(path: Path) -> Path:
    """Random sd-v2.1-base-4view weights as the original .pt holds them: `model.diffusion_model.*` (UNet with
    the camera MLP) and `first_stage_model.*` (VAE) in LDM names, plus the schedule buffers."""
    import torch
    from diffusers import AutoencoderKL

    from asdcli.priors.mvdream_unet import build_mvdream_unet, ldm_unet_key_map, ldm_vae_key_map, mvdream_unet_config

    torch.manual_seed(1)
    unet = build_mvdream_unet(mvdream_unet_config(), num_frames=4)
    names = ldm_unet_key_map(unet)
    sd = {f"model.diffusion_model.{names[k]}": v for k, v in unet.state_dict().items()}
    vae = AutoencoderKL(**{**SD21_VAE, "sample_size": 256})
    names = ldm_vae_key_map(vae)
    sd.update({f"first_stage_model.{names[k]}": v for k, v in vae.state_dict().items()})
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    sd["betas"], sd["alphas_cumprod"] = betas.float(), torch.cumprod(1 - betas, 0).float()
    torch.save(sd, path)
    del sd, unet, vae
    gc.collect()
    return path


TIMES: dict[str, float] = {}


def asd(name: str, tmp: Path, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(PYTHONPATH=str(ROOT), HF_HOME=str(tmp / "hf"), HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(tmp / "xdg"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "asdcli", *map(str, args)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=1200)
    TIMES[name] = time.perf_counter() - t0
    assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    return proc


CUT = ["render.resolution=32", "render.samples_per_ray=64", "render.importance_samples=32", "prior.image_size=256",
       "prompts.num_val=1", "train.val_views=2", "train.device=cpu", "--quiet"]


def in_child(fn, *args):
    """Run a checkpoint builder in a fresh process, so the gigabytes it allocates are returned when it ends."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def test_paper_recipes_run_against_full_size_published_layouts(tmp_path):
    t0 = time.perf_counter()
    sd21 = in_child(build_sd21_base, tmp_path / "stable-diffusion-2-1-base")
    TIMES["build SD 2.1-base folder"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ckpt = in_child(build_mvdream_checkpoint, tmp_path / "sd-v2.1-base-4view.pt")
    TIMES["build MVDream .pt"] = time.perf_counter() - t0
    assert ckpt.stat().st_size > 3e9 and (sd21 / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size > 3e9

    sd_run, mv_run = tmp_path / "runs" / "sd", tmp_path / "runs" / "mv"
    asd("train sd_hyper_ingp_mg15 --steps 2", tmp_path, "train", ROOT / "recipes" / "sd_hyper_ingp_mg15.yaml",
        "--steps", 2, "--out", sd_run, f"prior.model={sd21}", *CUT)
    asd("train mvdream_triplane --steps 2", tmp_path, "train", ROOT / "recipes" / "mvdream_triplane.yaml",
        "--steps", 2, "--out", mv_run, f"prior.model={ckpt}", f"prior.text_model={sd21}", "generator.low_res=16",
        *CUT)
    for run in (sd_run, mv_run):
        meta = json.loads((run / "meta.json").read_text())
        assert meta["step"] == 2
        losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert losses and all(isinstance(v, float) and v == v for row in losses for k, v in row.items()
                              if k.startswith("loss")), losses[-1]  # finite (v == v is False for NaN)

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a DSLR photo of a hamburger\na ripe strawberry\n")
    for name, run in (("sd", sd_run), ("mvdream", mv_run)):
        glb = tmp_path / f"{name}.glb"
        asd(f"generate ({name})", tmp_path, "generate", "a DSLR photo of a hamburger", "--checkpoint", run,
            "--out", glb, "--resolution", 64)
        assert glb.stat().st_size > 0
        report = tmp_path / f"{name}_eval.json"
        asd(f"eval ({name})", tmp_path, "eval", "--checkpoint", run, "--prompts", prompts, "--clip-score",
            "--views", 2, "--resolution", 64, "--json", report, "--quiet")
        rows = json.loads(report.read_text())["prompts"]
        assert len(rows) == 2 and all(-1.0 <= r["clip_similarity"] <= 1.0 for r in rows), rows

    child, own = (resource.getrusage(who).ru_maxrss / 2 ** 20 for who in (resource.RUSAGE_CHILDREN,
                                                                          resource.RUSAGE_SELF))
    print("\n" + "\n".join(f"{k:40s} {v:7.1f} s" for k, v in TIMES.items()))
    print(f"{'total':40s} {sum(TIMES.values()):7.1f} s; peak RSS of one process: {child:.1f} GiB "
          f"(the test itself: {own:.1f} GiB)")
