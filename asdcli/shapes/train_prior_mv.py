"""Training of the bundled ShapesWorld 4-view prior: a camera-conditioned pixel-space MVDream UNet.

The UNet is `build_mvdream_unet` (asdcli.priors.mvdream_unet): an SD-shaped diffusers UNet2DConditionModel on
3-channel 32² images whose camera MLP (`class_embed_type="projection"`, 16 → time-embedding width) is added to
the timestep embedding and whose self-attention spans the 4 views of an object — exactly what `MVDreamPrior`
loads and runs. Text goes in through cross-attention and, as in the 2D prior, through an attention-pooled text
embedding added to the time embedding (`addition_embed_type="text"`, computed from the token states alone).
Tokenizer: the ShapesWorld BPE of `asdcli.shapes.vocab`, shared with the 2D prior and the CLIP; the tiny
CLIPTextModel is trained jointly here.

One training sample = one TRAIN-split scene rendered (`gt_render.render_scenes`, Lambertian, 2×2 supersampling)
from 4 cameras 90° apart in azimuth from a random start, sharing elevation, fovy and distance — MVDream's layout,
`sample_training_cameras(CameraConfig(views_evenly_spaced=True), P, 4)`. The cameras enter as
`camera_embedding(c2w)` [4, 16], as `MVDreamPrior.conditioning` computes them, and the caption is the plain
prompt (the MVDream path adds no view suffix); a share of captions becomes the negative prompt "" (the
unconditional branch). Views of one object share one t (the prior's `shared_timestep`), each has its own noise.

Objective, schedule, optimiser, EMA and checkpoints are those of `train_prior` (ε-prediction, linear β, min-SNR-γ,
AdamW with warm-up + cosine, EMA export, safetensors checkpoints with the replay pool and RNG: `--resume` is
bit-exact on CPU). Export writes unet/ text_encoder/ tokenizer/ scheduler/ (no vae/ = pixel space), loaded with
`prior: {kind: mvdream, model: FOLDER, text_model: FOLDER, image_size: 32}`.

Commands (default sizes: 3.2M-parameter UNet, 16 objects × 4 views per step, ≈ 2.0 CPU-seconds per step on one
thread, so the default 6000 steps take ≈ 3.3 CPU-hours; `--resume` continues after an interruption):

    python -m asdcli.shapes train-prior-mv --out RUN --threads 1
    python -m asdcli.shapes export-prior-mv --from RUN --to asdcli/assets/shapes/mv_prior
    python -m asdcli.shapes eval-prior-mv --model asdcli/assets/shapes/mv_prior --grid check.png

The last is the 4-view consistency check (`eval_prior_mv`): per-view mask IoU against GT renders of the same
prompt and cameras (and against the GT 90° further on, which a camera-following prior must score lower), colour
spread across the views, and the bundled CLIP's R@1 per view.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from asdcli.conditioning import camera_embedding
from asdcli.config import CameraConfig
from asdcli.priors.mvdream import MVDreamPriorConfig
from asdcli.priors.mvdream_unet import build_mvdream_unet, mvdream_unet_config
from asdcli.render.cameras import sample_training_cameras
from asdcli.shapes.bundled import SHAPESWORLD_PRIOR_INFO
from asdcli.shapes.gt_render import render_scenes
from asdcli.shapes.prior_data import split_singles_pairs
from asdcli.shapes.runs import run_training
from asdcli.shapes.train_prior import PriorTrainer, export_ema_folder
from asdcli.shapes.vocab import MAX_LENGTH, build_tokenizer, token_ids

INFO_FILE = SHAPESWORLD_PRIOR_INFO[1]


@dataclass
class MVPriorTrainConfig:
    steps: int = 6000  # ≈ 2.0 CPU-s per step at these sizes: ≈ 3.3 CPU-hours
    batch: int = 16  # objects per step; the UNet sees batch × views images
    views: int = 4
    lr: float = 8e-4
    warmup: int = 200
    min_lr_ratio: float = 0.05  # cosine decays to lr × this
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.999
    image_size: int = 32
    channels: tuple[int, ...] = (48, 96, 96)
    attention: tuple[bool, ...] = (False, False, True)  # cross- and multi-view attention per level (8² only)
    head_channels: int = 16
    norm_groups: int = 16
    text_dim: int = 64
    text_layers: int = 2
    dropout: float = 0.18  # caption → negative prompt rate (trains the unconditional branch)
    snr_gamma: float = 5.0
    pool: int = 512  # replay pool of objects (× views renders)
    fresh: int = 12  # objects re-rendered per step
    supersample: int = 2
    shading: str = "lambertian"
    white_prob: float = 0.75  # per view: white background, else a uniform random colour
    single_prob: float = 0.3  # share of single-object prompts (the train split is 97 % pairs)
    elevation: tuple[float, float] = (-10.0, 45.0)  # the generators' CameraConfig ranges (recipes stay inside)
    fovy: tuple[float, float] = (40.0, 70.0)
    distance: tuple[float, float] = (1.0, 1.4)  # relative: distance / tan(fovy / 2)
    negative_prompt: str = ""
    seed: int = 0
    split_seed: int = 0
    checkpoint_every: int = 100  # steps; a checkpoint is also written every checkpoint_seconds
    checkpoint_seconds: float = 240.0

    ARCHITECTURE = ("image_size", "channels", "attention", "head_channels", "norm_groups", "text_dim", "text_layers")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MVPriorTrainConfig:
        known = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in data.items() if k in known})
        for key in ("channels", "attention", "elevation", "fovy", "distance"):
            setattr(out, key, tuple(getattr(out, key)))
        return out

    def camera_config(self) -> Any:
        return CameraConfig(elevation=tuple(self.elevation), fovy=tuple(self.fovy), distance=tuple(self.distance),
                            relative_distance=True, views_evenly_spaced=True)


def unet_config(cfg: MVPriorTrainConfig) -> dict[str, Any]:
    """UNet2DConditionModel kwargs: mvdream_unet_config at pixel-space sizes + the 2D prior's text embedding."""
    config = mvdream_unet_config(block_out_channels=tuple(cfg.channels), layers_per_block=1,
                                 attention=tuple(cfg.attention), head_channels=cfg.head_channels,
                                 cross_attention_dim=cfg.text_dim, camera_dim=16, in_channels=3,
                                 sample_size=cfg.image_size)
    config.update(norm_num_groups=cfg.norm_groups, addition_embed_type="text", addition_embed_type_num_heads=4)
    return config


def build_mv_models(cfg: MVPriorTrainConfig) -> tuple[Any, nn.Module, nn.Module]:
    """(tokenizer, CLIPTextModel, multi-view UNet spanning cfg.views views) with fresh weights from cfg.seed."""
    # lazy: transformers is heavy: only training builds the models
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer(MAX_LENGTH)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.text_dim, intermediate_size=4 * cfg.text_dim,
            num_hidden_layers=cfg.text_layers, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
        unet = build_mvdream_unet(unet_config(cfg), cfg.views)
    return tokenizer, text, unet


class MVPriorData:
    """Replay pool of objects × views: rgb [N, V, 3, H, W] and alpha [N, V, 1, H, W] premultiplied (fp16),
    prompt_id [N], c2w [N, V, 4, 4], fovy [N, V] (radians). With `gen` the pool is rendered now; without, it is
    left empty for `load_state` (resuming)."""

    KEYS = ("rgb", "alpha", "prompt_id", "c2w", "fovy")

    def __init__(self, cfg: MVPriorTrainConfig, gen: torch.Generator | None):
        self.cfg = cfg
        self.singles, self.pairs = split_singles_pairs(cfg.split_seed)
        self.prompts = self.singles + self.pairs
        n, v, s = cfg.pool, cfg.views, cfg.image_size
        self.rgb = torch.zeros(n, v, 3, s, s, dtype=torch.float16)
        self.alpha = torch.zeros(n, v, 1, s, s, dtype=torch.float16)
        self.prompt_id = torch.zeros(n, dtype=torch.long)
        self.c2w, self.fovy = torch.zeros(n, v, 4, 4), torch.zeros(n, v)
        for start in range(0, n if gen is not None else 0, 64):
            self._fill(torch.arange(start, min(n, start + 64)), gen)

    def _fill(self, slots: Tensor, gen: torch.Generator) -> None:
        cfg, count, v = self.cfg, len(slots), self.cfg.views
        single = torch.rand(count, generator=gen) < cfg.single_prob
        i_single = torch.randint(len(self.singles), (count,), generator=gen)
        i_pair = torch.randint(len(self.pairs), (count,), generator=gen) + len(self.singles)
        ids = torch.where(single, i_single, i_pair)
        cams = sample_training_cameras(cfg.camera_config(), count, v, gen)  # prompt-major: [o0v0..o0v3, o1v0..]
        out = render_scenes([self.prompts[i] for i in ids.tolist()], cams, cfg.image_size, cfg.image_size,
                            shading=cfg.shading, background=(0.0, 0.0, 0.0), supersample=cfg.supersample)
        s = cfg.image_size
        self.rgb[slots] = out.rgb.permute(0, 3, 1, 2).reshape(count, v, 3, s, s).half()
        self.alpha[slots] = out.alpha.reshape(count, v, 1, s, s).half()
        self.prompt_id[slots] = ids
        self.c2w[slots] = cams.c2w.reshape(count, v, 4, 4)
        self.fovy[slots] = cams.fovy.reshape(count, v)

    def refresh(self, gen: torch.Generator) -> None:
        self._fill(torch.randperm(self.cfg.pool, generator=gen)[: self.cfg.fresh], gen)

    def batch(self, gen: torch.Generator) -> tuple[Tensor, Tensor, list[str], Tensor]:
        """(images [B·V, 3, H, W] in [−1, 1] over fresh per-view backgrounds, cameras [B·V, 16] =
        camera_embedding(c2w), captions [B] (some dropped to the negative prompt), pool indices [B]).
        Rows are object-major: the V views of object i are rows i·V … i·V + V − 1."""
        cfg, v = self.cfg, self.cfg.views
        idx = torch.randint(cfg.pool, (cfg.batch,), generator=gen)
        n = cfg.batch * v
        white = torch.rand(n, 1, 1, 1, generator=gen) < cfg.white_prob
        bg = torch.where(white, torch.ones(n, 3, 1, 1), torch.rand(n, 3, 1, 1, generator=gen))
        rgb, alpha = self.rgb[idx].flatten(0, 1).float(), self.alpha[idx].flatten(0, 1).float()
        img = rgb + (1 - alpha) * bg
        cams = camera_embedding(self.c2w[idx].flatten(0, 1))
        drop = (torch.rand(cfg.batch, generator=gen) < cfg.dropout).tolist()
        captions = [cfg.negative_prompt if d else self.prompts[p]
                    for d, p in zip(drop, self.prompt_id[idx].tolist(), strict=True)]
        return img * 2 - 1, cams, captions, idx

    def state(self) -> dict[str, Tensor]:
        return {f"pool.{k}": getattr(self, k) for k in self.KEYS}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        for k in self.KEYS:
            setattr(self, k, tensors[f"pool.{k}"].clone())


def mv_diffusion_loss(unet: nn.Module, text: nn.Module, ids: Tensor, x0: Tensor, cameras: Tensor, alphas: Tensor,
                      gamma: float, views: int, gen: torch.Generator) -> Tensor:
    """min-SNR-γ weighted ε-MSE of a multi-view UNet. x0 [B·V, 3, H, W] in [−1, 1] object-major, cameras
    [B·V, 16], ids [B, L] token ids (one caption per object), alphas ᾱ [T]. One t per object, shared by its
    views (as the MVDream path samples it); independent noise per view."""
    b = ids.shape[0]
    t = torch.randint(len(alphas), (b,), generator=gen).repeat_interleave(views).to(x0.device)
    eps = torch.randn(x0.shape, generator=gen).to(x0.device)
    a = alphas[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    states = text(input_ids=ids).last_hidden_state.repeat_interleave(views, dim=0)  # [B·V, L, D]
    pred = unet(x_t, t, encoder_hidden_states=states, class_labels=cameras).sample
    snr = alphas[t] / (1 - alphas[t])
    weight = snr.clamp(max=gamma) / snr  # ε-prediction form of min-SNR-γ (Hang et al. 2023)
    return (weight * (pred - eps).square().mean(dim=(1, 2, 3))).mean()


class MVPriorTrainer(PriorTrainer):
    """The 2D trainer's run loop, checkpoint writing and metrics log, with the 4-view models, data and loss."""

    data_cls = MVPriorData
    build_models = staticmethod(build_mv_models)

    def batch_loss(self) -> Tensor:
        """Denoising loss of 4-view samples: one t per object, the views see each other and their cameras."""
        x0, cams, captions, _ = self.data.batch(self.gen)
        ids = token_ids(self.tokenizer, captions, MAX_LENGTH).to(self.device)
        x0, cams = x0.to(self.device), cams.to(self.device)
        return mv_diffusion_loss(self.unet, self.text, ids, x0, cams, self.alphas, self.cfg.snr_gamma,
                                 self.cfg.views, self.gen)


def train_prior_mv(out: str | Path, cfg: MVPriorTrainConfig | None = None, resume: bool = False,
                   steps: int | None = None, log=print, stop_after: int | None = None,
                   device: str = "cpu", overrides: dict | None = None) -> MVPriorTrainer:
    """Train (or with resume, continue) the 4-view prior in run directory `out`. A resumed run takes its config
    from the checkpoint; `steps` may extend it (which changes the cosine schedule from there on) and `overrides`
    change other keys from there on (not the architecture)."""
    return run_training(out, MVPriorTrainer, MVPriorTrainConfig, cfg, resume, steps, log, stop_after, device,
                        overrides)


def prior_config(folder: str | Path, **overrides: Any) -> Any:
    """The MVDreamPriorConfig that loads an exported 4-view prior folder (pixel space, its own text model)."""
    info = json.loads((Path(folder) / INFO_FILE).read_text())
    base = {"model": str(folder), "text_model": str(folder), "num_views": info["config"]["views"],
            "image_size": info["config"]["image_size"], "dtype": "float32",
            "negative_prompt": info["config"]["negative_prompt"]}
    return MVDreamPriorConfig(**{**base, **overrides})


def export_prior_mv(run_dir: str | Path, dest: str | Path, fp16: bool = True) -> Path:
    """Write the EMA weights of `run_dir`'s checkpoint at `dest` (built in a temp folder, renamed into place):
    unet/ (the multi-view UNet: MVDreamPrior re-installs the cross-view attention on load), text_encoder/,
    tokenizer/, scheduler/ (linear β, read by the MVDream path when present) and no vae/ (pixel space)."""

    def load_section(cfg: MVPriorTrainConfig) -> dict[str, Any]:
        # the recipe's prior section, with model = text_model = this folder (or bundled:shapes-mv-prior)
        return {"load": {"kind": "mvdream", "num_views": cfg.views, "image_size": cfg.image_size,
                         "negative_prompt": cfg.negative_prompt, "dtype": "float32"}}

    return export_ema_folder(run_dir, dest, MVPriorTrainConfig, build_mv_models, fp16, INFO_FILE,
                             "train-prior-mv", load_section)
