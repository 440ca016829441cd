"""A tiny, randomly initialised CLIP in transformers layout, built fully offline.

Tests (and anything else that must not download) load it through the same `from_pretrained` path as
openai/clip-vit-large-patch14. The tokenizer is a real byte-level CLIP BPE with no merges: its vocabulary is
the 256 byte-unicode characters, their end-of-word ("</w>") forms and the two special tokens, so every
string tokenizes (one token per byte) and `<|endoftext|>` has the highest id, as in OpenAI's vocabulary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_unicode_alphabet() -> list[str]:
    """GPT-2/CLIP's reversible byte → printable-unicode map, as a list indexed by byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping, shift = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:  # control/space bytes are moved above 255 so that no byte maps to whitespace
            mapping[b] = chr(256 + shift)
            shift += 1
    return [mapping[b] for b in range(256)]


def write_byte_vocab(folder: str | os.PathLike) -> int:
    """Write vocab.json and merges.txt of the merge-free byte-level CLIP BPE into `folder`; returns the
    vocabulary size."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = byte_unicode_alphabet()
    tokens = [*alphabet, *(ch + "</w>" for ch in alphabet), BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return len(tokens)


def tiny_clip_config(vocab_size: int, image_size: int = 32):
    """CLIPConfig with 2-layer, 32-wide text and vision towers (patch 8) and 16-d projections."""
    # lazy: transformers is heavy: only the CLIP paths (--clip-score, ShapesWorld CLIP training) load it
    from transformers import CLIPConfig

    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab_size - 2,
                eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=8)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def save_tiny_clip(path: str | os.PathLike, seed: int = 0) -> Path:
    """Build a tiny random CLIPModel + CLIPTokenizer and save both (safetensors) into `path`; returns it.

    The folder loads with CLIPModel / AutoTokenizer `from_pretrained` and with `asdcli.evaluate.ClipScorer`.
    The weights depend only on `seed`; the global torch RNG is left as it was.
    """
    # lazy: transformers is heavy: only the CLIP paths load it
    from transformers import CLIPModel, CLIPTokenizer

    path = Path(path)
    vocab_size = write_byte_vocab(path)
    tokenizer = CLIPTokenizer.from_pretrained(path, model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(tiny_clip_config(vocab_size))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    image_size = model.config.vision_config.image_size
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True,
        "size": {"shortest_edge": image_size}, "resample": 3, "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD), "do_convert_rgb": True,
    }
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2), encoding="utf-8")
    return path
