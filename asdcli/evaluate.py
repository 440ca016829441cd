"""CLIP evaluation of text-to-3D renders, following ScaleDreamer's protocol (evaluation_amortized.py).

Per prompt, V rendered views are embedded with CLIP's image tower and compared with the text embeddings of
every prompt of the evaluated set:
- `clip_similarity`: mean over views of cos(image, own prompt): plain cosine, as the paper reports (≈0.2–0.3
  for ViT-L/14).
- `clip_score`: mean over views of max(100·cos, 0), torchmetrics' CLIPScore convention (28.4 ≙ 0.284).
- `r_at_1`: per view, argmax over softmax(100·cos) against ALL prompts of the set; the rate of picking the
  own prompt, per prompt. More prompts = more distractors = harder.
Summaries average per-prompt values over prompts (the paper's "average" line).

Preprocessing as the paper's script: images in [0, 1] resized bilinearly to the model's image size
(antialiased, no centre crop; non-square images are squashed, so render square), then CLIP mean/std
normalisation. Text is padded to 77 tokens (the model's limit) and truncated with the end-of-text token kept.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from asdcli.atomic import write_bytes_atomic, write_json_atomic
from asdcli.bundled import resolve_bundled
from asdcli.clip_model import CLIP_MEAN, CLIP_STD
from asdcli.errors import UserError


def _looks_like_path(model: str) -> bool:
    # Hub ids are "name" or "org/name"; anything with more structure is meant as a folder.
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


def load_clip(model: str | os.PathLike):
    """(CLIPModel, tokenizer) from a local folder (transformers layout) or a hub id.

    HF_HUB_OFFLINE=1 is honoured by huggingface_hub; anything that cannot be loaded is a one-line UserError
    saying what to fetch and where to put it."""
    # lazy: transformers is heavy: only --clip-score loads it
    from transformers import AutoTokenizer, CLIPModel

    name = str(model)
    bundled = resolve_bundled(name)
    local = bundled if bundled is not None else Path(name).expanduser()
    if local.is_dir():
        source = str(local)
    elif _looks_like_path(name):
        raise UserError(f"CLIP model folder {name} does not exist: pass a folder in transformers CLIPModel "
                        "layout (config.json, model.safetensors, tokenizer files) or a hub id")
    else:
        source = name
    try:
        clip = CLIPModel.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as err:
        if type(err).__name__ == "UnpicklingError":  # weights_only=True refused it: name the folder, run nothing
            raise UserError(f"--clip-model {source}: its weights are a pickle holding more than tensors, refused "
                            "unread; use a folder with model.safetensors") from None
        if not isinstance(err, (OSError, ValueError)):
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if local.is_dir():
            raise UserError(f"{source} is not a loadable transformers CLIP model ({reason}); it needs "
                            "config.json, model.safetensors and tokenizer files") from err
        raise UserError(f"CLIP model {source!r} is not available ({reason}): download it on a machine with "
                        f"network with `hf download {source}` (into the Hugging Face cache, "
                        "~/.cache/huggingface/hub, or HF_HOME) or pass a local folder in transformers "
                        "CLIPModel layout") from err
    return clip, tokenizer


def _projected(output: Any) -> Tensor:
    """get_*_features returns a tensor in transformers 4 and a pooled output object in transformers 5."""
    return output if isinstance(output, Tensor) else output.pooler_output


class ClipScorer:
    """CLIP embeddings and metrics for renders. model: hub id or local folder; device: where CLIP runs."""

    def __init__(self, model: str | os.PathLike, device: str | torch.device = "cpu", batch_size: int = 32):
        self.model, self.tokenizer = load_clip(model)
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.image_size = int(self.model.config.vision_config.image_size)
        self.max_length = min(int(self.model.config.text_config.max_position_embeddings),
                              int(getattr(self.tokenizer, "model_max_length", 77)))
        self.mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, images: Any) -> Tensor:
        """[N, H, W, 3] float in [0, 1] or uint8, numpy or torch → pixel values [N, 3, S, S] on the device."""
        x = torch.as_tensor(images, device=self.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected images [N, H, W, 3], got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).clamp(0.0, 1.0)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def image_embeddings(self, images: Any) -> Tensor:
        """images [N, H, W, 3] in [0, 1] → L2-normalised CLIP image embeddings [N, D] (float32, CPU)."""
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.preprocess(images[start:start + self.batch_size])
            features = _projected(self.model.get_image_features(pixel_values=pixels))
            out.append(F.normalize(features.float(), dim=-1))
        return torch.cat(out).cpu()

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> Tensor:
        """prompts (P) → L2-normalised CLIP text embeddings [P, D] (float32, CPU)."""
        out = []
        for start in range(0, len(prompts), self.batch_size):
            tokens = self.tokenizer(list(prompts[start:start + self.batch_size]), padding="max_length",
                                    max_length=self.max_length, truncation=True, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            out.append(F.normalize(_projected(self.model.get_text_features(**tokens)).float(), dim=-1))
        return torch.cat(out).cpu()

    def score(self, prompts: Sequence[str], images: Any) -> dict[str, Tensor]:
        """Renders [P, V, H, W, 3] of `prompts` (P) → `clip_metrics` against all P prompts."""
        num_prompts, views = len(prompts), images.shape[1]
        flat = images.reshape(num_prompts * views, *images.shape[2:])
        image_emb = self.image_embeddings(flat).view(num_prompts, views, -1)
        return clip_metrics(image_emb, self.text_embeddings(prompts))


def clip_metrics(image_emb: Tensor, text_emb: Tensor) -> dict[str, Tensor]:
    """Per-prompt CLIP metrics (see the module docstring), each a float tensor [P].

    image_emb: [P, V, D] embeddings of prompt p's V views; text_emb: [P, D] (both re-normalised here).
    """
    if image_emb.ndim != 3 or text_emb.ndim != 2 or image_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(f"expected image_emb [P, V, D] and text_emb [P, D], got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    img, txt = F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1)
    cos = torch.einsum("pvd,qd->pvq", img, txt)  # [P, V, P]: every view against every prompt
    own_index = torch.arange(cos.shape[0])
    own = cos[own_index, :, own_index]  # [P, V]
    # softmax is monotone, so its argmax is the argmax of the logits 100·cos.
    retrieved = (100.0 * cos).softmax(dim=-1).argmax(dim=-1)  # [P, V]
    return {
        "clip_similarity": own.mean(dim=1),
        "clip_score": (100.0 * own).clamp(min=0.0).mean(dim=1),
        "r_at_1": (retrieved == own_index[:, None]).float().mean(dim=1),
    }


def _number(value: Any) -> float | None:
    """A JSON/CSV-friendly float: tensors and numpy scalars unwrapped, NaN/inf → None."""
    value = float(value.item() if hasattr(value, "item") else value)
    return value if math.isfinite(value) else None


@dataclass
class EvalReport:
    """Per-prompt rows ({"prompt": ..., metric: float | None, ...}), the `summary` (mean of each metric over
    the prompts where it is defined, and n_prompts) and free-form `meta` (model, views, checkpoint, ...)."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, prompts: Sequence[str], metrics: Mapping[str, Sequence[float] | Tensor],
              meta: Mapping[str, Any] | None = None) -> EvalReport:
        """From per-prompt metric columns, each of length P (`clip_metrics`, ground-truth columns, ...)."""
        for name, column in metrics.items():
            if len(column) != len(prompts):
                raise ValueError(f"metric {name!r} has {len(column)} values for {len(prompts)} prompts")
        rows = [{"prompt": prompt, **{k: _number(col[i]) for k, col in metrics.items()}}
                for i, prompt in enumerate(prompts)]
        summary: dict[str, Any] = {"n_prompts": len(prompts)}
        for name in metrics:
            defined = [row[name] for row in rows if row[name] is not None]
            summary[name] = sum(defined) / len(defined) if defined else None
        return cls(rows, summary, dict(meta or {}))

    @property
    def metric_names(self) -> list[str]:
        return [k for k in self.summary if k != "n_prompts"]

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "meta": self.meta, "prompts": self.rows}

    def write_json(self, path: str | os.PathLike) -> Path:
        """{"summary", "meta", "prompts": rows} as JSON (undefined values as null), written atomically."""
        return write_json_atomic(path, self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False, default=str)

    def write_csv(self, path: str | os.PathLike) -> Path:
        """One row per prompt: prompt, then each metric (empty when undefined); written atomically."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["prompt", *self.metric_names], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in self.rows)
        return write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))

    def table(self, max_rows: int = 20, title: str = "CLIP evaluation"):
        """A rich Table: the first `max_rows` prompts, then the mean over all prompts."""
        # lazy: rich's table only when a report is printed
        from rich.table import Table

        table = Table(title=title)
        table.add_column("prompt", overflow="ellipsis", max_width=60, no_wrap=True)
        for name in self.metric_names:
            table.add_column(name, justify="right")

        def fmt(value: Any) -> str:
            return "–" if value is None else f"{value:.4f}"

        for row in self.rows[:max_rows]:
            table.add_row(row["prompt"], *(fmt(row[name]) for name in self.metric_names))
        if len(self.rows) > max_rows:
            table.add_row(f"… {len(self.rows) - max_rows} more", *("" for _ in self.metric_names))
        table.add_section()
        table.add_row(f"mean over {self.summary['n_prompts']} prompts",
                      *(fmt(self.summary[name]) for name in self.metric_names), style="bold")
        return table
