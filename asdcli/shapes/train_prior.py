"""Training of the bundled ShapesWorld text-to-image prior: a pixel-space diffusers UNet + tiny CLIP text encoder.

Data, generated on the fly: ground-truth renders (`gt_render.render_scenes`, Lambertian, 2×2 supersampling) of
TRAIN-split prompts from the generators' camera distribution (`CameraConfig()`: elevation −10…45°, azimuth ±180°,
fovy 40…70°, relative distance 1.0…1.4), plus a share of high cameras (elevation 45…85°) so that the ", overhead
view" caption is learned too. Captions are "{prompt}{view suffix}" with the suffix chosen by
`asdcli.priors.perp_neg.view_directions` and this config's thresholds (recorded in the export, which the SD path
reads when a recipe leaves its thresholds unset, so recipe and training agree); a share of captions is replaced by
the negative prompt "" — exactly the text the SD path encodes for its unconditional branch. Renders are kept
premultiplied in a replay pool (each rendered image is reused ≈ batch/fresh times, with a new background, noise and
t every time): white backgrounds mostly, random solid colours otherwise, as the generators see.

Objective: ε-prediction under a linear-β DDPM schedule (1000 steps), min-SNR-γ weighting, AdamW with warm-up and
cosine decay, EMA weights (what export writes). Checkpoints (safetensors, temp + rename) hold weights, EMA,
optimiser moments, the replay pool and the RNG state, so `--resume` continues bit-exactly on CPU.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from asdcli.atomic import write_folder_atomic
from asdcli.bundled import resolve_bundled
from asdcli.errors import UserError
from asdcli.priors.base import write_folder_kind
from asdcli.shapes.bundled import SHAPESWORLD_PRIOR_INFO
from asdcli.shapes.prior import KIND as SHAPESWORLD_KIND
from asdcli.shapes.prior_data import PriorData
from asdcli.shapes.runs import (
    HISTORY_FILE,
    list_like,
    load_checkpoint,
    load_optimizer,
    optimizer_tensors,
    read_history,
    run_training,
    save_checkpoint,
)
from asdcli.shapes.vocab import MAX_LENGTH, build_tokenizer, token_ids, write_vocab
from asdcli.shapes.world.grammar import PAIR_ORDERS


@dataclass
class PriorTrainConfig:
    steps: int = 5000  # colour binding of pairs appears late: pair_color_ok 0.13 at 2,800 steps, 0.66 at 5,000
    batch: int = 64
    lr: float = 8e-4
    warmup: int = 200
    min_lr_ratio: float = 0.05  # cosine decays to lr × this
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.999
    image_size: int = 32
    channels: tuple[int, ...] = (48, 96, 96)
    text_dim: int = 64
    text_layers: int = 2
    dropout: float = 0.18  # caption → negative prompt ("") rate: trains the unconditional branch
    snr_gamma: float = 5.0
    pool: int = 1024  # replay pool of renders
    fresh: int = 16  # renders replaced per step
    supersample: int = 2
    shading: str = "lambertian"
    white_prob: float = 0.75  # background white; else a uniform random colour
    overhead_prob: float = 0.12  # share of cameras drawn at elevation 45…85° (overhead captions)
    single_prob: float = 0.3  # share of single-object prompts (the train split is 97 % pairs)
    # Share of pair draws that are "next to" pairs; None draws pairs as the split has them (half "next to").
    # Their layout is the only one that changes with the view caption (docs/notebook.md §9).
    next_to_prob: float | None = None
    # Share of "next to" draws seen from inside the front or back view bucket (else from the usual cameras). Only
    # those two views fix a pair's left-right order, which flips between them; a prior that has not learned the
    # flip draws one order for both captions, and ASD then gets contradicting gradients (docs/notebook.md §9).
    front_back_prob: float = 0.0
    # How captions name a "next to" pair: "prompt" (as written, whatever the view) or "left_first" (the object
    # on the image's left first, `grammar.name_left_first`). Recorded in the export; the SD path then writes its
    # view captions the same way.
    pair_order: str = "prompt"
    # A run directory or an exported folder (bundled:shapes-prior too) whose EMA weights start this run (a
    # fine-tune: fresh optimiser, schedule and pool).
    init_from: str | None = None
    # View-caption rules, recorded in the export (the SD path uses them when a recipe leaves its own unset).
    # 67.5 / 67.5 (side views only where a "next to" pair's objects hide each other) was tried as a 2,000-step
    # fine-tune: no change, the prior stays view-blind for pair layout (docs/notebook.md §9).
    front_threshold: float = 45.0
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0
    negative_prompt: str = ""
    seed: int = 0
    split_seed: int = 0
    checkpoint_every: int = 100  # steps; a checkpoint is also written every checkpoint_seconds
    checkpoint_seconds: float = 240.0

    ARCHITECTURE = ("image_size", "channels", "text_dim", "text_layers")  # fixed for a run and its fine-tunes

    def __post_init__(self) -> None:
        if self.next_to_prob is not None and not 0.0 <= self.next_to_prob <= 1.0:
            raise UserError(f"next_to_prob: expected a share in [0, 1] or null, got {self.next_to_prob}")
        if not 0.0 <= self.front_back_prob <= 1.0:
            raise UserError(f"front_back_prob: expected a share in [0, 1], got {self.front_back_prob}")
        if self.pair_order not in PAIR_ORDERS:
            raise UserError(f"pair_order: expected one of {', '.join(PAIR_ORDERS)}, got {self.pair_order!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PriorTrainConfig:
        known = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in data.items() if k in known})
        out.channels = tuple(out.channels)
        return out


def build_models(cfg: PriorTrainConfig) -> tuple[Any, nn.Module, nn.Module]:
    """(tokenizer, CLIPTextModel, UNet2DConditionModel) with fresh weights from cfg.seed.

    UNet: 3 → 3 channels, one resnet per level, cross-attention at the coarsest level and in the mid block only
    (attention at 16² halves the speed on CPU); the text also enters every resnet through the time embedding
    (`addition_embed_type="text"`: attention pooling of the token states), which the SD path feeds unchanged
    because it is computed from encoder_hidden_states alone."""
    # lazy: diffusers/transformers are heavy: only training builds the models
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer(MAX_LENGTH)
    n = len(cfg.channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.text_dim, intermediate_size=4 * cfg.text_dim,
            num_hidden_layers=cfg.text_layers, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
        unet = UNet2DConditionModel(
            sample_size=cfg.image_size, in_channels=3, out_channels=3, block_out_channels=tuple(cfg.channels),
            layers_per_block=1, down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
            up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1), cross_attention_dim=cfg.text_dim,
            attention_head_dim=8, norm_num_groups=16, addition_embed_type="text",
            addition_embed_type_num_heads=4)
    return tokenizer, text, unet


def build_scheduler() -> Any:
    """Linear β 1e-4…0.02 over 1000 steps (pixel space: ᾱ_T ≈ 4e-5, so t = T really is pure noise)."""
    # lazy: diffusers is heavy: only training builds the scheduler
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                         prediction_type="epsilon")


def source_weights(source: str) -> tuple[dict[str, Tensor], dict[str, Any], dict]:
    """(EMA state dict of {"unet", "text"} in float32, the source's config, its history record) of a run
    directory (its checkpoint's EMA) or of an exported folder (`bundled:NAME`, or a folder with a training record
    beside unet/ and text_encoder/: its weights are the EMA, stored in float16 by default)."""
    folder = resolve_bundled(source) or Path(source).expanduser()
    info = next((folder / n for n in SHAPESWORLD_PRIOR_INFO if (folder / n).is_file()), None)
    if info is None:
        tensors, meta = load_checkpoint(folder, "train-prior")
        ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        return ema, meta["config"], {"init_from": str(source), "source_steps": int(meta["step"])}

    record = json.loads(info.read_text())
    ema = {}
    for prefix, sub, name in (("unet", "unet", "diffusion_pytorch_model.safetensors"),
                              ("text", "text_encoder", "model.safetensors")):
        if not (folder / sub / name).is_file():
            raise UserError(f"init_from: {folder} has no {sub}/{name}; give a run directory or a folder written "
                            "by export-prior")
        ema.update({f"{prefix}.{k}": v.float() for k, v in load_file(str(folder / sub / name)).items()})
    return ema, record.get("config", {}), {"init_from": str(source), "source_steps": int(record["trained_steps"]),
                                           "source_history": record.get("history", [])}


def diffusion_loss(unet: nn.Module, text: nn.Module, ids: Tensor, x0: Tensor, alphas: Tensor, gamma: float,
                   gen: torch.Generator) -> Tensor:
    """min-SNR-γ weighted ε-MSE. x0 [B, 3, H, W] in [−1, 1]; ids [B, L] token ids; alphas ᾱ [T]."""
    b = x0.shape[0]
    # t and ε come from the CPU generator (the same draws on every device), then move to the images' device
    t = torch.randint(len(alphas), (b,), generator=gen).to(x0.device)
    eps = torch.randn(x0.shape, generator=gen).to(x0.device)
    a = alphas[t].view(b, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    pred = unet(x_t, t, encoder_hidden_states=text(input_ids=ids).last_hidden_state).sample
    snr = alphas[t] / (1 - alphas[t])
    weight = snr.clamp(max=gamma) / snr  # ε-prediction form of min-SNR-γ (Hang et al. 2023)
    return (weight * (pred - eps).square().mean(dim=(1, 2, 3))).mean()


def lr_at(cfg: PriorTrainConfig, step: int) -> float:
    """Linear warm-up over cfg.warmup steps, then cosine from lr to lr·min_lr_ratio at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


class PriorTrainer:
    """Models, EMA, optimiser, data and RNG of one run directory; `run()` trains to cfg.steps."""

    data_cls = PriorData  # the training-image pool (the 4-view trainer swaps in its own, and its models)
    build_models = staticmethod(build_models)  # cfg → tokenizer, text encoder, UNet

    def __init__(self, out: Path, cfg: PriorTrainConfig, device: str = "cpu"):
        self.out, self.cfg, self.device = Path(out), cfg, torch.device(device)
        self.tokenizer, self.text, self.unet = self.build_models(cfg)
        # The data pool, its renders and the RNG stay on the CPU; the models, EMA and optimiser on `device`.
        self.model = nn.ModuleDict({"unet": self.unet, "text": self.text}).to(self.device)
        self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.alphas = build_scheduler().alphas_cumprod.float().to(self.device)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.data: PriorData | None = None

    def save(self) -> Path:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.items()})
        tensors.update(optimizer_tensors(self.opt))
        tensors.update(self.data.state())
        tensors["rng"] = self.gen.get_state()
        return save_checkpoint(self.out, tensors, {"step": self.step, "config": asdict(self.cfg)})

    def load(self) -> None:
        tensors, meta = load_checkpoint(self.out)
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        self.ema = {k[4:]: v.to(self.device, copy=True) for k, v in tensors.items() if k.startswith("ema.")}
        load_optimizer(self.opt, tensors, meta)
        self.data = self.data_cls(self.cfg, None)  # the pool comes from the checkpoint, not from rendering
        self.data.load_state(tensors)
        self.gen.set_state(tensors["rng"])
        self.step = int(meta["step"])

    def init_weights(self, source: str) -> None:
        """Model and EMA both start from `source`'s EMA weights (a run directory, an exported folder or
        `bundled:NAME`); the architecture must match."""
        ema, src, record = source_weights(source)
        own = asdict(self.cfg)
        differ = [k for k in self.cfg.ARCHITECTURE if k in src and list_like(src[k]) != list_like(own[k])]
        if differ:
            pairs = ", ".join(f"{k} {list_like(src[k])} there, {list_like(own[k])} here" for k in differ)
            raise UserError(f"init_from: {source} has another architecture ({pairs}); set these keys to the "
                            "source's values")
        try:
            self.model.load_state_dict(ema)
        except RuntimeError as err:  # same config keys, other tensors: e.g. a 4-view export given to train-prior
            raise UserError(f"init_from: {source} holds other model weights than this trainer builds "
                            f"({str(err).splitlines()[0]}); give a run or export of the same trainer") from None
        self.ema = {k: v.to(self.device, copy=True) for k, v in self.model.state_dict().items()}
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / HISTORY_FILE, "a") as fh:  # the export's record then tells the source's steps too
            fh.write(json.dumps(record) + "\n")

    def train_step(self) -> float:
        """One optimiser step on a fresh batch: AdamW with the warm-up/cosine lr, clipping, then the EMA."""
        cfg = self.cfg
        self.data.refresh(self.gen)
        for group in self.opt.param_groups:
            group["lr"] = lr_at(cfg, self.step)
        loss = self.batch_loss()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.step += 1
        decay = min(cfg.ema, (1 + self.step) / (10 + self.step))  # short EMA memory early on
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                self.ema[k].lerp_(v, 1 - decay) if v.is_floating_point() else self.ema[k].copy_(v)
        return float(loss.detach())

    def batch_loss(self) -> Tensor:
        """The denoising loss of one batch drawn from the pool (the 4-view trainer overrides this)."""
        x0, captions = self.data.batch(self.gen)
        ids = token_ids(self.tokenizer, captions, MAX_LENGTH).to(self.device)
        return diffusion_loss(self.unet, self.text, ids, x0.to(self.device), self.alphas, self.cfg.snr_gamma, self.gen)

    def run(self, log=print, stop_after: int | None = None) -> None:
        """Train to cfg.steps (or stop at step `stop_after`: an interruption, the schedule is unchanged)."""
        cfg = self.cfg
        end = min(cfg.steps, stop_after or cfg.steps)
        if self.data is None:  # a fresh run (a resumed one has its pool from the checkpoint)
            if getattr(cfg, "init_from", None):
                self.init_weights(cfg.init_from)
            self.data = self.data_cls(cfg, self.gen)
        last_save, t0, start, losses = time.time(), time.time(), self.step, []
        while self.step < end:
            losses.append(self.train_step())
            due = self.step % cfg.checkpoint_every == 0 or time.time() - last_save > cfg.checkpoint_seconds
            if due or self.step == end:
                self.save()
                last_save = time.time()
            if self.step % 25 == 0 or self.step == end:
                rate = (self.step - start) / (time.time() - t0)
                eta = (cfg.steps - self.step) / max(rate, 1e-9)
                record = {"step": self.step, "loss": sum(losses) / len(losses), "lr": lr_at(cfg, self.step - 1),
                          "steps_per_s": rate, "eta_min": eta / 60, "time": time.time()}
                with open(self.out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                log(f"step {self.step}/{cfg.steps} loss {record['loss']:.4f} lr {record['lr']:.2e} "
                    f"{rate:.2f} it/s eta {eta / 60:.1f} min")
                losses = []


def train_prior(out: str | Path, cfg: PriorTrainConfig | None = None, resume: bool = False,
                steps: int | None = None, log=print,
                stop_after: int | None = None, device: str = "cpu", overrides: dict | None = None) -> PriorTrainer:
    """Train (or with resume, continue) the prior in run directory `out`. A resumed run takes its config from
    the checkpoint; `steps` may extend it (which changes the cosine schedule from there on) and `overrides`
    change other keys from there on (not the architecture)."""
    return run_training(out, PriorTrainer, PriorTrainConfig, cfg, resume, steps, log, stop_after, device, overrides)


def export_prior(run_dir: str | Path, dest: str | Path, fp16: bool = True) -> Path:
    """Write the EMA weights of `run_dir`'s checkpoint as a diffusers folder (unet/, text_encoder/, tokenizer/,
    scheduler/; no vae/ = pixel space) at `dest`, built in a temp folder and renamed into place."""
    return export_ema_folder(run_dir, dest, PriorTrainConfig, build_models, fp16, SHAPESWORLD_PRIOR_INFO[0],
                             "train-prior", prior_kind=SHAPESWORLD_KIND)


def export_ema_folder(run_dir: str | Path, dest: str | Path, config_cls: type, build, fp16: bool, info_file: str,
                      command: str, extra_info=None, prior_kind: str | None = None) -> Path:
    """The shared export of the prior trainers: the checkpoint's EMA weights loaded into `build(cfg)`'s models,
    written as unet/, text_encoder/, tokenizer/ (+ vocab.json, merges.txt), scheduler/ and `info_file`
    (`extra_info(cfg)` adds keys to it); with `prior_kind`, the record that only that prior kind may load it."""
    tensors, meta = load_checkpoint(run_dir, command)
    cfg = config_cls.from_dict(meta["config"])
    tokenizer, text, unet = build(cfg)
    model = nn.ModuleDict({"unet": unet, "text": text})
    model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})

    def write(tmp: Path) -> None:
        (unet.half() if fp16 else unet).save_pretrained(str(tmp / "unet"), safe_serialization=True)
        # Text encoders are loaded in fp32 whatever the file holds; fp16 storage halves the size.
        (text.half() if fp16 else text).save_pretrained(str(tmp / "text_encoder"), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        write_vocab(tmp / "tokenizer")  # vocab.json + merges.txt: what transformers 4's slow CLIPTokenizer reads
        build_scheduler().save_pretrained(str(tmp / "scheduler"))
        info = {"trained_steps": meta["step"], "config": asdict(cfg), "weights": "ema",
                "dtype": "float16" if fp16 else "float32", "history": read_history(run_dir),
                **(extra_info(cfg) if extra_info else {})}
        (tmp / info_file).write_text(json.dumps(info, indent=1) + "\n")
        if prior_kind:
            write_folder_kind(tmp, prior_kind)

    return write_folder_atomic(Path(dest), write)
