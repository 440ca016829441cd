"""The text encoder an LDM-layout checkpoint carries (`cond_stage_model.*`), and the CLIP tokenizer it needs, offline.

Two layouts occur; the MVDream checkpoints use those of the Stable Diffusion releases they were tuned from:
- OpenCLIP, `cond_stage_model.model.*` (sd-v2.1-base-4view: ViT-H/14 text tower, width 1024, 24 blocks). LDM's
  FrozenOpenCLIPEmbedder uses the "penultimate" layer: it stops before the last block and applies the final
  layer norm, which is a CLIPTextModel with one block fewer (SD 2's diffusers text_encoder has 23 layers) and
  plain GELU. open_clip pads with id 0 ("!").
- CLIP, `cond_stage_model.transformer.text_model.*` (sd-v1.5-4view: OpenAI ViT-L/14, width 768, 12 layers,
  quick-GELU): a transformers CLIPTextModel already, last layer; padded with <|endoftext|>.
Weight names are converted by diffusers' single-file functions (convert_open_clip_checkpoint,
convert_ldm_clip_checkpoint); the CLIPTextConfig is read off the shapes. The head count is not stored in the
weights: every OpenAI/OpenCLIP text tower uses 64-wide heads (ViT-L 768/12, ViT-H 1024/16), hence width / 64.
The tokenizer is OpenAI CLIP's BPE, shipped in asdcli/assets/clip (see its NOTICE.md).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from asdcli.errors import UserError
from asdcli.priors.text import TextEncoder

OPEN_CLIP_PREFIX = "cond_stage_model.model."
CLIP_PREFIX = "cond_stage_model.transformer."
HEAD_WIDTH = 64  # every CLIP / OpenCLIP text tower
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_MERGES = Path(__file__).resolve().parent.parent / "assets" / "clip" / "bpe_merges.txt.gz"
# Buffers some transformers versions saved with the weights, and OpenCLIP's unused contrastive head.
_IGNORED = ("embeddings.position_ids", "text_projection.weight")


def _bytes_to_unicode() -> list[str]:
    """The 256 byte symbols of byte-level BPE in CLIP's vocabulary order: printable bytes keep their character,
    the others map to code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


class PaddedTokenizer:
    """A tokenizer whose padding id is `pad_token_id` without making that token special: SD 2's diffusers
    tokenizer declares pad_token "!", which also splits every "!" out of the text ("!!" → 0, 0), where
    open_clip, which MVDream's text encoder was trained with, merges "!!" (id 748) and pads with id 0."""

    def __init__(self, tokenizer: Any, pad_token_id: int) -> None:
        self._tokenizer, self.pad_token_id = tokenizer, pad_token_id

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._tokenizer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def clip_tokenizer(pad_token: str, max_length: int) -> Any:
    """CLIP tokenizer over the shipped BPE (49,408 ids: bytes, bytes + </w>, merges, BOS, EOS) for `max_length`
    tokens, padding with `pad_token`: "!" (id 0, as open_clip pads for OpenCLIP) or EOS (OpenAI CLIP)."""
    tokenizer = _clip_tokenizer(max_length)
    return tokenizer if pad_token == EOS else PaddedTokenizer(tokenizer, tokenizer.convert_tokens_to_ids(pad_token))


@functools.lru_cache(maxsize=4)
def _clip_tokenizer(max_length: int) -> Any:
    """transformers CLIPTokenizer over the shipped BPE; pads with EOS (its only special tokens are BOS/EOS)."""
    # lazy: transformers is heavy: only a checkpoint's own text tower needs it
    from transformers import CLIPTokenizer

    merges = gzip.decompress(_MERGES.read_bytes()).decode("utf-8").splitlines()
    symbols = _bytes_to_unicode()
    words = symbols + [s + "</w>" for s in symbols] + ["".join(m.split(" ")) for m in merges] + [BOS, EOS]
    vocab = {w: i for i, w in enumerate(words)}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=max_length, pad_token=EOS)


def text_layout(sd: dict[str, Tensor]) -> str | None:
    """"openclip", "clip" or None: which text encoder (if any) the checkpoint state dict `sd` holds."""
    if f"{OPEN_CLIP_PREFIX}token_embedding.weight" in sd:
        return "openclip"
    if any(f"{CLIP_PREFIX}{level}embeddings.token_embedding.weight" in sd for level in ("text_model.", "")):
        return "clip"  # saved by transformers < 5.6 (with the text_model level) or later (without)
    return None


def _layers(sd: dict[str, Tensor], prefix: str) -> int:
    return 1 + max(int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix))


def _config(vocab: int, width: int, inner: int, layers: int, positions: int, act: str, pad_id: int) -> Any:
    # lazy: transformers is heavy: only a checkpoint's own text tower needs it
    from transformers import CLIPTextConfig

    if width % HEAD_WIDTH:
        raise UserError(f"prior.text_model: the checkpoint's text encoder is {width} wide, not a multiple of the "
                        f"{HEAD_WIDTH}-wide heads of CLIP text towers; set prior.text_model to a diffusers folder")
    return CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=inner, num_hidden_layers=layers,
                          num_attention_heads=width // HEAD_WIDTH, max_position_embeddings=positions,
                          hidden_act=act, layer_norm_eps=1e-5, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                          pad_token_id=pad_id)


def _openclip(sd: dict[str, Tensor]) -> tuple[Any, dict[str, Tensor], str]:
    """CLIPTextConfig, diffusers-converted weights and pad token of an OpenCLIP text tower (penultimate layer)."""
    # lazy: diffusers is heavy: only an OpenCLIP text tower needs its converter
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    p = OPEN_CLIP_PREFIX
    blocks = f"{p}transformer.resblocks."
    n = _layers(sd, blocks)
    vocab, width = sd[f"{p}token_embedding.weight"].shape
    config = _config(int(vocab), int(width), int(sd[f"{blocks}0.mlp.c_fc.weight"].shape[0]), n - 1,
                     int(sd[f"{p}positional_embedding"].shape[0]), "gelu", 0)
    # The last block is never run (penultimate layer): leave it out before converting.
    kept = {k: v for k, v in sd.items() if k.startswith(p) and not k.startswith(f"{blocks}{n - 1}.")}
    holder = nn.Module()
    holder.config = config  # the converter reads hidden_size off it when the projection is absent
    return config, convert_open_clip_checkpoint(holder, kept, prefix=p), "!"


def _clip(sd: dict[str, Tensor]) -> tuple[Any, dict[str, Tensor], str]:
    """CLIPTextConfig, diffusers-converted weights and pad token of an OpenAI CLIP text model (last layer)."""
    # lazy: diffusers is heavy: only a CLIP text tower needs its converter
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    p = CLIP_PREFIX + ("text_model." if f"{CLIP_PREFIX}text_model.embeddings.token_embedding.weight" in sd else "")
    vocab, width = sd[f"{p}embeddings.token_embedding.weight"].shape
    config = _config(int(vocab), int(width), int(sd[f"{p}encoder.layers.0.mlp.fc1.weight"].shape[0]),
                     _layers(sd, f"{p}encoder.layers."), int(sd[f"{p}embeddings.position_embedding.weight"].shape[0]),
                     "quick_gelu", int(vocab) - 1)
    return config, convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith(CLIP_PREFIX)}), EOS


def _no_init() -> Any:
    """transformers' context that skips weight initialisation (moved between versions)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def _load_strict(model: nn.Module, weights: dict[str, Tensor]) -> None:
    """Every parameter of `model` from `weights` (diffusers names, maybe with the `text_model.` level that newer
    transformers flattened away); nothing else but known leftovers."""
    weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
    if hasattr(model, "text_model"):  # transformers < 5.6 keeps the level
        weights = {(k if k.startswith("text_projection") else f"text_model.{k}"): v for k, v in weights.items()}
    target = model.state_dict()
    missing = sorted(set(target) - set(weights))
    unexpected = sorted(k for k in set(weights) - set(target) if not k.endswith(_IGNORED))
    bad = [k for k in target if k in weights and weights[k].shape != target[k].shape]
    if missing or unexpected or bad:
        raise UserError(f"prior.model: the checkpoint's text encoder (cond_stage_model) does not convert: missing "
                        f"{missing[:3]}, unexpected {unexpected[:3]}, wrong shapes {bad[:3]}; set prior.text_model "
                        f"to a diffusers folder with text_encoder/ and tokenizer/")
    # assign: take the (memory-mapped) checkpoint tensors as they are instead of copying 1.4 GB for ViT-H.
    model.load_state_dict({k: weights[k].contiguous() for k in target}, strict=True, assign=True)


def text_encoder_from_checkpoint(sd: dict[str, Tensor], encoder_id: str,
                                 device: torch.device | str = "cpu") -> TextEncoder:
    """Tokenizer + CLIPTextModel (float32, frozen) equal to the checkpoint's cond_stage_model; UserError if it
    holds none (text_layout(sd) is None)."""
    # lazy: transformers is heavy: only a checkpoint's own text tower needs it
    from transformers import CLIPTextModel

    layout = text_layout(sd)
    if layout is None:
        raise UserError("prior.text_model: the checkpoint holds no text encoder (cond_stage_model.*); set "
                        "prior.text_model to a diffusers folder or hub id with text_encoder/ and tokenizer/, e.g. "
                        "stabilityai/stable-diffusion-2-1-base")
    try:
        config, weights, pad = _openclip(sd) if layout == "openclip" else _clip(sd)
    except (KeyError, ValueError) as exc:  # a truncated or foreign cond_stage_model
        raise UserError(f"prior.model: the checkpoint's text encoder (cond_stage_model) has an unexpected layout "
                        f"({type(exc).__name__}: {str(exc)[:80]}); set prior.text_model to a diffusers folder with "
                        f"text_encoder/ and tokenizer/") from None
    with _no_init():  # every parameter is loaded below (strictly): random init would cost 14 s for ViT-H
        model = CLIPTextModel(config).float()
    _load_strict(model, {k: v.float() for k, v in weights.items()})
    tokenizer = clip_tokenizer(pad, int(config.max_position_embeddings))
    if len(tokenizer) != config.vocab_size:
        raise UserError(f"prior.model: the checkpoint's text encoder has {config.vocab_size} token embeddings, not "
                        f"CLIP's {len(tokenizer)}; set prior.text_model to a diffusers folder with its tokenizer/")
    return TextEncoder(tokenizer, model.eval(), encoder_id, device)
