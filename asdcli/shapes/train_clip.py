"""Training of the bundled ShapesWorld CLIP (transformers CLIPModel layout, the vocab tokenizer) for `asd eval`.

Data: ground-truth renders of TRAIN-split prompts (a replay pool, `fresh` renders replaced per step) from
orbit-like cameras (elevation 15°, distance 3, fovy 40°, any azimuth: the `asd eval` orbit) and training-like
ones (`CameraConfig()`), Lambertian mostly and albedo sometimes (recipes may render either), white backgrounds
mostly, random solid colours otherwise, random horizontal flips (a flip maps every scene to itself or, for "next
to", to its swapped twin, which is the same scene turned 180°). Captions are the plain prompts (no view suffix).

Loss: symmetric InfoNCE with learned temperature; the image side also ranks `hard_negatives` edited captions per
image (relation order swapped, colours swapped or changed, a shape, size or relation changed) built only from
objects of the train split, so no held-out (shape, colour) combination is seen even as a negative. Captions
that describe the same scene as an image (a duplicate, or "A next to B" vs "B next to A") are masked out of its
negatives, because no picture can tell them apart.
"""

from __future__ import annotations

import ast
import json
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdcli.atomic import write_folder_atomic
from asdcli.clip_model import CLIP_MEAN, CLIP_STD
from asdcli.config import CameraConfig
from asdcli.evaluate import ClipScorer, clip_metrics
from asdcli.render.cameras import CameraBatch, cameras_from_angles, orbit_cameras, sample_training_cameras
from asdcli.shapes.gt_render import render_scenes
from asdcli.shapes.prior_data import split_singles_pairs
from asdcli.shapes.runs import (
    load_checkpoint,
    load_optimizer,
    optimizer_tensors,
    read_history,
    run_training,
    save_checkpoint,
)
from asdcli.shapes.vocab import MAX_LENGTH, build_tokenizer, write_vocab
from asdcli.shapes.world.grammar import (
    COLORS,
    SHAPES,
    SIZES,
    ObjectSpec,
    SceneSpec,
    held_out_combinations,
    parse_prompt,
    splits,
)


@dataclass
class ClipTrainConfig:
    steps: int = 3000
    batch: int = 64
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.05
    image_size: int = 64
    patch: int = 8
    supersample: int = 1  # rays per pixel side of the training renders
    width: int = 128
    vision_layers: int = 6
    text_layers: int = 3
    projection: int = 128
    hard_negatives: int = 4
    # Chance that a hard negative swaps one object's shape for its look-alike (LOOKALIKES): the bundled CLIP's
    # misses on GT renders are mostly those shapes seen face-on (docs/notebook.md §10).
    lookalike_prob: float = 0.0
    pool: int = 2048
    fresh: int = 32
    orbit_prob: float = 0.6
    albedo_prob: float = 0.25
    white_prob: float = 0.7
    single_prob: float = 0.25
    seed: int = 0
    split_seed: int = 0
    checkpoint_every: int = 200
    checkpoint_seconds: float = 240.0

    ARCHITECTURE = ("image_size", "patch", "width", "vision_layers", "text_layers", "projection")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipTrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def build_clip(cfg: ClipTrainConfig) -> tuple[Any, nn.Module]:
    """(tokenizer, CLIPModel) with fresh weights from cfg.seed; text context MAX_LENGTH, EOS pooling."""
    # lazy: transformers is heavy: only CLIP training builds the model
    from transformers import CLIPConfig, CLIPModel

    tok = build_tokenizer(MAX_LENGTH)
    heads = max(1, cfg.width // 32)
    text = dict(vocab_size=len(tok), hidden_size=cfg.width, intermediate_size=4 * cfg.width,
                num_hidden_layers=cfg.text_layers, num_attention_heads=heads, max_position_embeddings=MAX_LENGTH,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=cfg.width, intermediate_size=4 * cfg.width, num_hidden_layers=cfg.vision_layers,
                  num_attention_heads=heads, image_size=cfg.image_size, patch_size=cfg.patch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection))
    return tok, model


def scene_key(spec: SceneSpec) -> tuple:
    """Identifies what a picture can show: "A next to B" and "B next to A" are one scene turned 180°."""
    objs = tuple((o.shape, o.color, o.size or "") for o in spec.objects)
    return (spec.relation, tuple(sorted(objs)) if spec.relation == "next to" else objs)


def _edits(spec: SceneSpec, rng: random.Random) -> list[SceneSpec]:
    """Candidate hard negatives of a scene (one random edit each)."""
    objs, rel = list(spec.objects), spec.relation
    i = rng.randrange(len(objs))
    recolor = ObjectSpec(objs[i].shape, rng.choice([c for c in COLORS if c != objs[i].color]), objs[i].size)
    reshape = ObjectSpec(rng.choice([s for s in SHAPES if s != objs[i].shape]), objs[i].color, objs[i].size)
    out = [SceneSpec(tuple(recolor if j == i else o for j, o in enumerate(objs)), rel),
           SceneSpec(tuple(reshape if j == i else o for j, o in enumerate(objs)), rel)]
    if rel is None:
        size = rng.choice([s for s in (None, *SIZES) if s != objs[0].size])
        out.append(SceneSpec((ObjectSpec(objs[0].shape, objs[0].color, size),)))
        return out
    a, b = objs
    out.append(SceneSpec((b, a), rel))  # "on top of" swapped: a different scene (hard); "next to": masked
    out.append(SceneSpec((ObjectSpec(a.shape, b.color), ObjectSpec(b.shape, a.color)), rel))
    out.append(SceneSpec((a, b), "next to" if rel == "on top of" else "on top of"))
    return out


# Shapes that look alike from some views at 64²: a pyramid face-on is a cone's triangle, a cube face-on a
# cylinder's rectangle (the bundled CLIP's most frequent confusions on GT renders, in this order).
LOOKALIKES: dict[str, tuple[str, ...]] = {"pyramid": ("cone",), "cone": ("pyramid",), "cube": ("cylinder",),
                                          "cylinder": ("cube", "capsule"), "capsule": ("cylinder",),
                                          "sphere": ("capsule",)}


def _lookalike_edit(spec: SceneSpec, rng: random.Random) -> SceneSpec | None:
    """One object's shape replaced by a look-alike; None when no object has one (a torus alone)."""
    objs = list(spec.objects)
    which = [i for i, o in enumerate(objs) if o.shape in LOOKALIKES]
    if not which:
        return None
    i = rng.choice(which)
    objs[i] = ObjectSpec(rng.choice(LOOKALIKES[objs[i].shape]), objs[i].color, objs[i].size)
    return SceneSpec(tuple(objs), spec.relation)


def hard_negatives(prompt: str, k: int, rng: random.Random, held: frozenset, lookalike: float = 0.0) -> list[str]:
    """k edited captions of `prompt` that describe other scenes and use no held-out (shape, colour) object;
    each is a look-alike shape edit with probability `lookalike`, else one of `_edits`."""
    spec = parse_prompt(prompt)
    out: list[str] = []
    for _ in range(20 * k):
        cand = _lookalike_edit(spec, rng) if lookalike and rng.random() < lookalike else None
        cand = cand or rng.choice(_edits(spec, rng))
        if scene_key(cand) != scene_key(spec) and not any((o.shape, o.color) in held for o in cand.objects):
            out.append(cand.text)
            if len(out) == k:
                return out
    return out + [out[-1] if out else prompt] * (k - len(out))  # never reached with the grammar's sizes


class ClipData:
    """Replay pool of renders: images [N, 3, S, S] fp16 in [0, 1] (background included), prompt ids [N]."""

    def __init__(self, cfg: ClipTrainConfig, gen: torch.Generator | None):
        self.cfg = cfg
        singles, pairs = split_singles_pairs(cfg.split_seed)
        self.singles, self.prompts = len(singles), singles + pairs
        self.images = torch.zeros(cfg.pool, 3, cfg.image_size, cfg.image_size, dtype=torch.float16)
        self.prompt_id = torch.zeros(cfg.pool, dtype=torch.long)
        for start in range(0, cfg.pool if gen is not None else 0, 256):
            self._fill(torch.arange(start, min(cfg.pool, start + 256)), gen)

    def _cameras(self, n: int, gen: torch.Generator):
        """Training-like cameras, a share replaced by the eval orbit's (elevation 15°, distance 3, fovy 40°)."""
        cams = sample_training_cameras(CameraConfig(), n, 1, gen)
        az = torch.rand(n, generator=gen) * 360.0 - 180.0
        full = torch.ones(n)
        orbit = cameras_from_angles(15.0 * full, az, 3.0 * full, 40.0 * full)
        pick = torch.rand(n, generator=gen) < self.cfg.orbit_prob
        for k in ("c2w", "fovy", "elevation", "azimuth", "distance"):
            v = getattr(cams, k)
            setattr(cams, k, torch.where(pick.view(-1, *[1] * (v.dim() - 1)), getattr(orbit, k), v))
        return cams

    def _fill(self, slots: Tensor, gen: torch.Generator) -> None:
        cfg, n = self.cfg, len(slots)
        single = torch.rand(n, generator=gen) < cfg.single_prob
        ids = torch.where(single, torch.randint(self.singles, (n,), generator=gen),
                          torch.randint(self.singles, len(self.prompts), (n,), generator=gen))
        cams = self._cameras(n, gen)
        white = torch.rand(n, 1, generator=gen) < cfg.white_prob
        bg = torch.where(white, torch.ones(n, 3), torch.rand(n, 3, generator=gen))
        albedo = torch.rand(n, generator=gen) < cfg.albedo_prob
        texts = [self.prompts[i] for i in ids.tolist()]
        for shading, mask in (("lambertian", ~albedo), ("albedo", albedo)):
            sel = mask.nonzero().squeeze(1)
            if len(sel):
                keys = ("c2w", "fovy", "elevation", "azimuth", "distance")
                sub = CameraBatch(*(getattr(cams, k)[sel] for k in keys))
                out = render_scenes([texts[i] for i in sel.tolist()], sub, cfg.image_size, cfg.image_size,
                                    shading=shading, background=bg[sel], supersample=cfg.supersample)
                self.images[slots[sel]] = out.rgb.permute(0, 3, 1, 2).half()
        self.prompt_id[slots] = ids

    def refresh(self, gen: torch.Generator) -> None:
        self._fill(torch.randperm(self.cfg.pool, generator=gen)[: self.cfg.fresh], gen)

    def batch(self, gen: torch.Generator) -> tuple[Tensor, list[str]]:
        """Pixel values [B, 3, S, S] (CLIP-normalised, random flips) and their prompts."""
        idx = torch.randint(self.cfg.pool, (self.cfg.batch,), generator=gen)
        img = self.images[idx].float()
        flip = torch.rand(len(idx), generator=gen) < 0.5
        img = torch.where(flip.view(-1, 1, 1, 1), img.flip(-1), img)
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (img - mean) / std, [self.prompts[i] for i in self.prompt_id[idx].tolist()]

    def state(self) -> dict[str, Tensor]:
        return {"pool.images": self.images, "pool.prompt_id": self.prompt_id}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        self.images, self.prompt_id = tensors["pool.images"].clone(), tensors["pool.prompt_id"].clone()


def tokenize(tokenizer: Any, texts: list[str]) -> dict[str, Tensor]:
    """As `asdcli.evaluate.ClipScorer.text_embeddings` tokenises: padded to MAX_LENGTH, with attention mask."""
    out = tokenizer(list(texts), padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def _features(output: Any) -> Tensor:
    return output if isinstance(output, Tensor) else output.pooler_output


def contrastive_loss(model: nn.Module, tokenizer: Any, pixels: Tensor, prompts: list[str], negatives: list[str],
                     k: int) -> tuple[Tensor, Tensor]:
    """InfoNCE over B images vs B prompts (+ B·k hard negatives on the image side). pixels [B, 3, S, S].
    Returns (loss, image→text top-1 accuracy on the batch)."""
    b, dev = len(prompts), pixels.device
    img = F.normalize(_features(model.get_image_features(pixel_values=pixels)), dim=-1)
    tokens = {k: v.to(dev) for k, v in tokenize(tokenizer, prompts + negatives).items()}
    txt = F.normalize(_features(model.get_text_features(**tokens)), dim=-1)
    logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T  # [B, B(1 + k)]
    keys = [scene_key(parse_prompt(p)) for p in prompts + negatives]
    same = torch.tensor([[keys[i] == kj for kj in keys] for i in range(b)], device=dev)  # [B, B(1+k)]
    own = torch.zeros_like(same)
    own[torch.arange(b), torch.arange(b)] = True
    logits_i = logits.masked_fill(same & ~own, float("-inf"))  # the same scene under another caption is no negative
    target = torch.arange(b, device=dev)
    logits_t = logits[:, :b].T.masked_fill((same[:, :b] & ~own[:, :b]).T, float("-inf"))
    loss = 0.5 * (F.cross_entropy(logits_i, target) + F.cross_entropy(logits_t, target))
    return loss, (logits_i.argmax(dim=1) == target).float().mean()


class ClipTrainer:
    """Model, optimiser, pool and RNGs of one run directory; `run()` trains to cfg.steps."""

    def __init__(self, out: Path, cfg: ClipTrainConfig, device: str = "cpu"):
        self.out, self.cfg, self.device = Path(out), cfg, torch.device(device)
        self.tokenizer, self.model = build_clip(cfg)
        self.model.to(self.device)  # the pool, its renders and the RNGs stay on the CPU
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.rng = random.Random(cfg.seed)  # hard-negative edits
        self.held = held_out_combinations(cfg.split_seed)
        self.step, self.data = 0, None

    def save(self) -> Path:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(optimizer_tensors(self.opt))
        tensors.update(self.data.state())
        tensors["rng"] = self.gen.get_state()
        meta = {"step": self.step, "config": asdict(self.cfg), "py_rng": repr(self.rng.getstate())}
        return save_checkpoint(self.out, tensors, meta)

    def load(self) -> None:
        tensors, meta = load_checkpoint(self.out)
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        load_optimizer(self.opt, tensors, meta)
        self.data = ClipData(self.cfg, None)
        self.data.load_state(tensors)
        self.gen.set_state(tensors["rng"])
        self.rng.setstate(ast.literal_eval(meta["py_rng"]))
        self.step = int(meta["step"])

    def train_step(self) -> tuple[float, float]:
        cfg = self.cfg
        self.data.refresh(self.gen)
        pixels, prompts = self.data.batch(self.gen)
        negatives = [n for p in prompts for n in hard_negatives(p, cfg.hard_negatives, self.rng, self.held,
                                                                   cfg.lookalike_prob)]
        warm = min(1.0, (self.step + 1) / cfg.warmup)
        cosine = 0.5 * (1 + torch.cos(torch.tensor(torch.pi * self.step / max(1, cfg.steps)))).item()
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr * warm * (0.05 + 0.95 * cosine)
        loss, acc = contrastive_loss(self.model, self.tokenizer, pixels.to(self.device), prompts, negatives,
                                     cfg.hard_negatives)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        return float(loss.detach()), float(acc)

    def run(self, log=print, stop_after: int | None = None) -> None:
        """Train to cfg.steps (or stop at step `stop_after`: an interruption, the schedule is unchanged)."""
        cfg = self.cfg
        end = min(cfg.steps, stop_after or cfg.steps)
        if self.data is None:
            self.data = ClipData(cfg, self.gen)
        last_save, t0, start, stats = time.time(), time.time(), self.step, []
        while self.step < end:
            stats.append(self.train_step())
            if self.step % cfg.checkpoint_every == 0 or time.time() - last_save > cfg.checkpoint_seconds \
                    or self.step == end:
                self.save()
                last_save = time.time()
            if self.step % 25 == 0 or self.step == end:
                rate = (self.step - start) / (time.time() - t0)
                rec = {"step": self.step, "loss": sum(s[0] for s in stats) / len(stats),
                       "acc": sum(s[1] for s in stats) / len(stats), "steps_per_s": rate, "time": time.time()}
                with open(self.out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                log(f"step {self.step}/{cfg.steps} loss {rec['loss']:.4f} batch acc {rec['acc']:.3f} "
                    f"{rate:.2f} it/s eta {(cfg.steps - self.step) / max(rate, 1e-9) / 60:.1f} min")
                stats = []


def train_clip(out: str | Path, cfg: ClipTrainConfig | None = None, resume: bool = False,
               steps: int | None = None, log=print,
               stop_after: int | None = None, device: str = "cpu", overrides: dict | None = None) -> ClipTrainer:
    """Train (or with resume, continue; config from the checkpoint, `steps` may extend it, `overrides` change
    other keys from there on) in run dir `out`."""
    return run_training(out, ClipTrainer, ClipTrainConfig, cfg, resume, steps, log, stop_after, device, overrides)


def export_clip(run_dir: str | Path, dest: str | Path) -> Path:
    """CLIPModel (safetensors, fp32: it is small) + tokenizer + preprocessor_config.json → `dest`, atomically."""
    tensors, meta = load_checkpoint(run_dir)
    cfg = ClipTrainConfig.from_dict(meta["config"])
    tokenizer, model = build_clip(cfg)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_vocab(tmp)  # vocab.json + merges.txt: what transformers 4's slow CLIPTokenizer reads
        pre = {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
               "size": {"shortest_edge": cfg.image_size}, "resample": 2, "do_center_crop": True,
               "crop_size": {"height": cfg.image_size, "width": cfg.image_size}, "do_rescale": True,
               "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN),
               "image_std": list(CLIP_STD), "do_convert_rgb": True}
        (tmp / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
        record = {"trained_steps": meta["step"], "config": meta["config"], "history": read_history(run_dir)}
        (tmp / "shapesworld_clip.json").write_text(json.dumps(record, indent=1) + "\n")

    return write_folder_atomic(Path(dest), write)


def evaluate_clip(model: str | Path, views: int = 8, split: str = "test", size: int | None = None,
                  limit: int | None = None) -> dict[str, Any]:
    """`asd eval`'s protocol on GT renders: every prompt of `split` rendered from `views` orbit cameras
    (elevation 15°, distance 3, fovy 40°, white background, Lambertian, `size`² pixels, default the model's
    input size), ClipScorer + clip_metrics against all
    prompts of the split. Also `r_at_1_scene`: a retrieved caption describing the same scene counts (the
    "next to" twin), the best any image model can do."""
    prompts = splits(0)[split][:limit]
    scorer = ClipScorer(str(model))
    size = size or scorer.image_size  # renders at the model's input size, anti-aliased to ≥ 64² rays
    cams = orbit_cameras(views, 15.0, 3.0, 40.0)
    emb = []
    for i in range(0, len(prompts), 64):
        chunk = prompts[i:i + 64]
        c = type(cams)(*(getattr(cams, k).repeat(len(chunk), *[1] * (getattr(cams, k).dim() - 1))
                         for k in ("c2w", "fovy", "elevation", "azimuth", "distance")))
        rgb = render_scenes(chunk, c, size, size, supersample=max(1, 64 // size)).rgb
        emb.append(scorer.image_embeddings(rgb).view(len(chunk), views, -1))
    image_emb, text_emb = torch.cat(emb), scorer.text_embeddings(prompts)
    metrics = clip_metrics(image_emb, text_emb)
    return {"split": split, "prompts": len(prompts), "views": views,
            "r_at_1": float(metrics["r_at_1"].mean()), "r_at_1_scene": scene_r_at_1(image_emb, text_emb, prompts),
            "clip_similarity": float(metrics["clip_similarity"].mean())}


def scene_r_at_1(image_emb: Tensor, text_emb: Tensor, prompts: list[str]) -> float:
    """R@1 where a retrieved caption of the same scene counts ("A next to B" for "B next to A": one scene turned
    180°, which no single view can tell apart). image_emb [P, V, D], text_emb [P, D] of `prompts`."""
    keys = [scene_key(parse_prompt(p)) for p in prompts]
    retrieved = torch.einsum("pvd,qd->pvq", image_emb.float(), text_emb.float()).argmax(dim=-1)  # [P, V]
    hits = [[keys[q] == keys[p] for q in row] for p, row in enumerate(retrieved.tolist())]
    return float(torch.tensor(hits, dtype=torch.float32).mean())
