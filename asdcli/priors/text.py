"""Text side of a prior: tokenizer + frozen CLIP text encoder, with a small in-memory cache.

`asd generate` needs only prompt embeddings, so `load_text_encoder` builds this part alone (no UNet, no VAE).
The priors use the same class internally so both paths produce identical embeddings.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asdcli.bundled import resolve_bundled
from asdcli.conditioning import TextEmbeddings
from asdcli.errors import UserError
from asdcli.registry import resolve

# Files fetched from the hub: configs, tokenizer files and the full-precision safetensors weights only (the
# fp16/EMA variants would double the download).
_HUB_FILES = ("*.json", "*.txt", "*.safetensors")
_HUB_IGNORE = ["*fp16*", "*non_ema*", "*.ema.*"]


class TextEncoder:
    """Tokenizer + CLIP text model → TextEmbeddings (tokens [N, L, D] = last_hidden_state, pooled [N, D] =
    pooler_output, the end-of-text state). Frozen; outputs are float32 on `device`.

    Long prompts are cut to L tokens keeping the end-of-text token (the reference cut after tokenising and
    could drop it, which changes the pooled vector); the first truncation is warned about, all are counted.
    """

    def __init__(self, tokenizer: Any, text_model: torch.nn.Module, encoder_id: str,
                 device: torch.device | str = "cpu", cache_size: int = 4096) -> None:
        self.tokenizer = tokenizer
        self.model = text_model.to(device).requires_grad_(False).eval()
        self.encoder_id = encoder_id  # identifies the weights in cache keys (model id + revision)
        positions = int(text_model.config.max_position_embeddings)
        tok_max = int(getattr(tokenizer, "model_max_length", positions) or positions)
        self.max_length = min(positions, tok_max)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()
        self._disk: Any = None  # an attached TextEmbeddingCache (attach_disk_cache), read before encoding
        self._suffixes: tuple[str, ...] = ("",)
        self.truncated = 0  # prompts cut so far (only the first one is warned about: corpora can hold many)

    @property
    def device(self) -> torch.device:
        """Where the text model lives now (a prior moved with .to() moves it too)."""
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, prompts: list[str]) -> Tensor:
        """Token ids [N, L]: BOS, content, EOS, then padding; over-long prompts keep their EOS."""
        length = self.max_length
        # Tokenising to L + 1 tells a prompt that fits exactly (≤ L ids) from one that had to be cut.
        ids = self.tokenizer(list(prompts), truncation=True, max_length=length + 1)["input_ids"]
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        rows = []
        for prompt, row in zip(prompts, ids, strict=True):
            row = list(row)
            if len(row) > length:
                self._warn_truncated(prompt)
                row = row[: length - 1] + [eos]
            rows.append(row + [pad] * (length - len(row)))
        return torch.tensor(rows, dtype=torch.long)

    def _warn_truncated(self, prompt: str) -> None:
        self.truncated += 1
        if self.truncated == 1:
            warnings.warn(f"prompt longer than {self.max_length} tokens was truncated (end-of-text kept): "
                          f"{prompt[:80]!r}; later ones are counted in TextEncoder.truncated, not warned",
                          stacklevel=2)

    @torch.no_grad()
    def _run(self, prompts: list[str], batch_size: int = 64) -> tuple[Tensor, Tensor]:
        tokens, pooled = [], []
        for i in range(0, len(prompts), batch_size):
            ids = self.tokenize(prompts[i:i + batch_size]).to(self.device)
            out = self.model(input_ids=ids)
            tokens.append(out.last_hidden_state.float())
            pooled.append(out.pooler_output.float())
        return torch.cat(tokens), torch.cat(pooled)

    def attach_disk_cache(self, cache: Any, suffixes: tuple[str, ...]) -> None:
        """Read embeddings from an on-disk TextEmbeddingCache (built for prompts × suffixes) before encoding:
        a 100k-prompt corpus then costs memory-mapped reads, not text-encoder calls or RAM."""
        self._disk, self._suffixes = cache, tuple(sorted(suffixes, key=len, reverse=True))

    def _disk_key(self, text: str) -> tuple[str, str] | None:
        for suffix in self._suffixes:
            if text.endswith(suffix) and (text[: len(text) - len(suffix)], suffix) in self._disk:
                return text[: len(text) - len(suffix)], suffix
        return None

    def _lookup(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Embeddings of `texts`: disk-cache hits read, the rest encoded."""
        keys = [self._disk_key(t) for t in texts] if self._disk is not None else []
        hits = [i for i, k in enumerate(keys) if k is not None]
        if not hits:
            return self._run(texts)
        got = self._disk.get([keys[i][0] for i in hits], [keys[i][1] for i in hits], device=self.device)
        hit_set = set(hits)
        rest = [i for i in range(len(texts)) if i not in hit_set]
        tok = got.tokens.new_empty((len(texts), *got.tokens.shape[1:]))
        pool = got.pooled.new_empty((len(texts), *got.pooled.shape[1:]))
        tok[hits], pool[hits] = got.tokens, got.pooled
        if rest:
            t2, p2 = self._run([texts[i] for i in rest])
            tok[rest], pool[rest] = t2, p2
        return tok, pool

    def encode(self, prompts: list[str]) -> TextEmbeddings:
        """Embeddings of `prompts` (duplicates and recently seen prompts are encoded once)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            tok, pool = self._lookup(missing)
            for i, p in enumerate(missing):
                # Clones: a view would keep the whole batch's storage alive after the others are evicted.
                self._cache[p] = (tok[i].clone(), pool[i].clone())
        rows = []
        for p in prompts:
            self._cache.move_to_end(p)
            rows.append(self._cache[p])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return TextEmbeddings(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))

    def encode_uncached(self, prompts: list[str], batch_size: int = 64) -> TextEmbeddings:
        """Embeddings without touching the in-memory cache (bulk encoding for the on-disk cache)."""
        tok, pool = self._run(list(prompts), batch_size)
        return TextEmbeddings(tok, pool)


def load_text_encoder(cfg: Any, device: torch.device | str = "cpu") -> TextEncoder:
    """The text encoder of the prior that `cfg` (a prior config with `kind`) describes, without UNet/VAE."""
    prior_cls = resolve("prior", cfg.kind, "prior.kind")
    return prior_cls.build_text_encoder(cfg, torch.device(device))


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _check_subfolders(folder: Path, model: str, needs: tuple[str, ...]) -> Path:
    missing = [sub for sub in needs if not (folder / sub).is_dir()]
    if missing:
        lacking, wanted = ", ".join(s + "/" for s in missing), ", ".join(s + "/" for s in needs)
        raise UserError(f"prior.model: {model!r} has no {lacking} subfolder; expected a diffusers folder "
                        f"with {wanted} (and vae/ for a latent prior)")
    return folder


def looks_like_path(model: str) -> bool:
    """Hub ids are "name" or "owner/name"; anything else (absolute, ./, ~, deeper paths) means a folder."""
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1


def resolve_model_folder(model: str, revision: str | None, needs: tuple[str, ...]) -> Path:
    """A local diffusers folder holding the subfolders `needs`: `model` itself when it is a folder (no
    network), a bundled model (`bundled:shapes-prior`), else a hub snapshot (cache only when HF_HUB_OFFLINE=1).
    Failures are one-line UserErrors."""
    bundled = resolve_bundled(model)
    if bundled is not None:
        return _check_subfolders(bundled, model, needs)
    path = Path(model).expanduser()
    if path.is_dir():
        return _check_subfolders(path, model, needs)
    if path.exists():
        raise UserError(f"prior.model: {model!r} is a file; expected a diffusers folder with "
                        f"{', '.join(s + '/' for s in needs)}")
    if looks_like_path(model):
        raise UserError(f"prior.model: folder {model!r} not found; set prior.model to a local diffusers "
                        f"folder or a hub id such as stabilityai/stable-diffusion-2-1-base")
    # lazy: huggingface_hub only for a hub id (not a folder, not bundled)
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    patterns = [f"{sub}/{pat}" for sub in (*needs, "vae") for pat in _HUB_FILES] + ["model_index.json"]
    try:
        local = snapshot_download(model, revision=revision, allow_patterns=patterns,
                                  ignore_patterns=_HUB_IGNORE, local_files_only=offline)
    except Exception as exc:  # the hub client raises many types (HTTP, cache miss, bad id): all user-facing
        fix = (f"download it with `huggingface-cli download {model}` or set prior.model to a local diffusers "
               f"folder")
        if offline:
            raise UserError(f"prior.model: {model!r} not found locally and the hub is offline "
                            f"(HF_HUB_OFFLINE=1); {fix}") from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"prior.model: {model!r} could not be fetched from the hub ({reason[:160]}); "
                        f"{fix}") from None
    return _check_subfolders(Path(local), model, needs)


def load_clip_text(folder: Path, encoder_id: str, device: torch.device) -> TextEncoder:
    """Tokenizer + CLIPTextModel from `folder`/tokenizer and `folder`/text_encoder.

    The text model stays float32 on every device so embeddings (and the on-disk cache built from them) are the
    same whether they were computed for training on a GPU or for `asd generate` on a CPU."""
    # lazy: transformers is heavy: ShapesWorld's bundled text encoder runs without it
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
        model = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), torch_dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise UserError(f"prior.model: cannot load the text encoder from {str(folder)!r} "
                        f"({str(exc).strip().splitlines()[0][:160]})") from None
    return TextEncoder(tokenizer, model, encoder_id, device)
