"""The ShapesWorld prior's text side without transformers: a CLIP byte-level BPE tokenizer and a CLIP text
transformer in plain torch, reading the prior folder's tokenizer/ and text_encoder/ files as they are.

Why: the bundled text encoder is 2 layers 64 wide, and importing transformers to run it cost ~3 s of CPU, more
than the rest of `asd generate` together. Both parts reproduce transformers' CLIPTokenizer (the `tokenizers`
backend: NFC, whitespace runs → one space, lowercase; CLIP's split pattern; byte-level BPE with "</w>" word
ends; <|startoftext|> … <|endoftext|>) and CLIPTextModel (pre-LayerNorm causal transformer, quick-GELU MLP,
pooled = the state at the first end-of-text token) to float rounding; tests compare them on many prompts.
Used only by the ShapesWorld prior kind (asdcli.shapes.prior, `runs_bundled_text`); every other prior keeps
transformers.
"""

from __future__ import annotations

import json
import unicodedata
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from asdcli.errors import UserError
from asdcli.priors.text import TextEncoder
from asdcli.shapes.bundled import SHAPESWORLD_PRIOR_INFO

SPECIALS = ("<|startoftext|>", "<|endoftext|>")
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
# Unicode White_Space, as the Rust regex `\s` of the `tokenizers` split pattern reads it (str.isspace adds
# U+001C..U+001F, which the pattern does not count as space).
WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                        + "".join(chr(c) for c in range(0x2000, 0x200B)))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (the byte-level alphabet of the vocabulary)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


BYTE_CHARS = _bytes_to_unicode()


def _kind(ch: str) -> str:
    """'L' letter, 'N' number, 'S' space, 'O' anything else (the classes of CLIP's split pattern)."""
    if ch in WHITE_SPACE:
        return "S"
    cat = unicodedata.category(ch)[0]
    return cat if cat in ("L", "N") else "O"


def split_words(text: str) -> list[str]:
    """CLIP's pre-tokenizer on normalised text: contractions, letter runs, single digits, runs of other
    non-space characters; spaces dropped."""
    words, i, n = [], 0, len(text)
    while i < n:
        kind = _kind(text[i])
        if kind == "S":
            i += 1
            continue
        contraction = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
        if contraction:
            j = i + len(contraction)
        elif kind == "N":
            j = i + 1
        else:
            j = i + 1
            while j < n and _kind(text[j]) == kind:
                j += 1
        words.append(text[i:j])
        i = j
    return words


def normalize(text: str) -> str:
    """NFC, every whitespace run → one space, lowercase character by character (as `tokenizers` does)."""
    text = unicodedata.normalize("NFC", text)
    out, space = [], False
    for ch in text:
        if ch in WHITE_SPACE:
            if not space:
                out.append(" ")
            space = True
            continue
        space = False
        out.append(ch.lower())
    return "".join(out)


class ClipBpeTokenizer:
    """CLIPTokenizer's encoding from vocab.json + merges.txt: `tok(texts, truncation=True, max_length=L)` →
    {"input_ids": [[bos, …, eos], …]} (content cut to L − 2 ids), as TextEncoder calls it."""

    def __init__(self, folder: Path, model_max_length: int) -> None:
        """folder: tokenizer/ (vocab.json, merges.txt, optional tokenizer_config.json); model_max_length: the
        text model's positions (used when the config names none)."""
        self.vocab: dict[str, int] = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        pairs = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        self.ranks = {pair: rank for rank, pair in enumerate(pairs)}
        settings_file = folder / "tokenizer_config.json"
        settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
        self.bos_token_id, self.eos_token_id = self.vocab[SPECIALS[0]], self.vocab[SPECIALS[1]]
        self.pad_token_id = self.vocab.get(settings.get("pad_token"), self.eos_token_id)
        self.unk_token_id = self.vocab.get(settings.get("unk_token"), self.eos_token_id)
        self.model_max_length = int(settings.get("model_max_length", model_max_length))
        self._bpe = lru_cache(maxsize=4096)(self._bpe_word)

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        """One pre-tokenised word → ids: byte-level characters, "</w>" on the last, merges by rank."""
        symbols = [BYTE_CHARS[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        while len(symbols) > 1:
            pairs = zip(symbols[:-1], symbols[1:], strict=True)
            ranked = [(self.ranks.get(p, 1 << 30), i) for i, p in enumerate(pairs)]
            rank, i = min(ranked)
            if rank == 1 << 30:
                break
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        return tuple(self.vocab.get(s, self.unk_token_id) for s in symbols)

    def encode(self, text: str) -> list[int]:
        """Content ids of one text (no BOS/EOS); special-token strings in it map to their ids."""
        ids: list[int] = []
        pieces = [text]
        for special in SPECIALS:  # matched before normalisation, as added tokens are
            pieces = [p for piece in pieces for p in _split_keep(piece, special)]
        for piece in pieces:
            if piece in SPECIALS:
                ids.append(self.vocab[piece])
                continue
            for word in split_words(normalize(piece)):
                ids.extend(self._bpe(word))
        return ids

    def __call__(self, texts: list[str], truncation: bool = True, max_length: int | None = None) -> dict:
        limit = (max_length or self.model_max_length) - 2 if truncation else None
        rows = []
        for text in texts:
            ids = self.encode(text)
            rows.append([self.bos_token_id, *(ids[:limit] if limit is not None else ids), self.eos_token_id])
        return {"input_ids": rows}


def _split_keep(text: str, sep: str) -> list[str]:
    parts = text.split(sep)
    out = []
    for k, part in enumerate(parts):
        if k:
            out.append(sep)
        if part:
            out.append(part)
    return out


class ClipTextTransformer(nn.Module):
    """CLIPTextModel's forward in plain torch: ids [N, L] → last_hidden_state [N, L, D] and pooler_output
    [N, D] (the final-normalised state at each row's first end-of-text id)."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        if config.get("hidden_act", "quick_gelu") not in ("quick_gelu", "gelu"):
            raise UserError(f"text_encoder/config.json: hidden_act {config['hidden_act']!r} is not supported by "
                            f"the bundled text path; expected quick_gelu or gelu")
        self.config = SimpleNamespace(**config)
        d, inner = int(config["hidden_size"]), int(config["intermediate_size"])
        self.heads, self.eps = int(config["num_attention_heads"]), float(config.get("layer_norm_eps", 1e-5))
        self.eos = int(config["eos_token_id"])
        self.token = nn.Embedding(int(config["vocab_size"]), d)
        self.position = nn.Embedding(int(config["max_position_embeddings"]), d)
        self.layers = nn.ModuleList(_Layer(d, inner) for _ in range(int(config["num_hidden_layers"])))
        self.final_norm = nn.LayerNorm(d, eps=self.eps)

    def act(self, x: Tensor) -> Tensor:
        if self.config.hidden_act == "gelu":
            return F.gelu(x)
        return x * torch.sigmoid(1.702 * x)

    def forward(self, input_ids: Tensor) -> SimpleNamespace:
        n, length = input_ids.shape
        h = self.token(input_ids) + self.position.weight[:length]
        for layer in self.layers:
            x = F.layer_norm(h, h.shape[-1:], layer.norm1.weight, layer.norm1.bias, self.eps)
            h = h + layer.out_proj(self._attend(layer, x))
            x = F.layer_norm(h, h.shape[-1:], layer.norm2.weight, layer.norm2.bias, self.eps)
            h = h + layer.fc2(self.act(layer.fc1(x)))
        h = self.final_norm(h)
        first_eos = (input_ids == self.eos).int().argmax(-1)
        return SimpleNamespace(last_hidden_state=h, pooler_output=h[torch.arange(n), first_eos])

    def _attend(self, layer: _Layer, x: Tensor) -> Tensor:
        n, length, d = x.shape

        def heads(t: Tensor) -> Tensor:  # [N, L, D] → [N, H, L, D/H]
            return t.view(n, length, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(layer.q_proj(x)), heads(layer.k_proj(x)),
                                             heads(layer.v_proj(x)), is_causal=True)
        return out.transpose(1, 2).reshape(n, length, d)


class _Layer(nn.Module):
    def __init__(self, d: int, inner: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, inner), nn.Linear(inner, d)


_RENAME = (("embeddings.token_embedding.", "token."), ("embeddings.position_embedding.", "position."),
           ("final_layer_norm.", "final_norm."), ("encoder.layers.", "layers."), (".layer_norm1.", ".norm1."),
           (".layer_norm2.", ".norm2."), (".self_attn.", "."), (".mlp.", "."))


def load_text_transformer(folder: Path) -> ClipTextTransformer:
    """text_encoder/config.json + model.safetensors (transformers' key names, any float dtype) → float32."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model = ClipTextTransformer(config)
    state = {}
    for key, value in load_file(str(folder / "model.safetensors")).items():
        key = key.removeprefix("text_model.")
        if key.endswith("position_ids"):
            continue
        for old, new in _RENAME:
            key = key.replace(old, new)
        state[key] = value.float()
    model.load_state_dict(state, strict=True)
    return model


def runs_bundled_text(folder: Path) -> bool:
    """True when this module can run `folder`'s text side: a ShapesWorld prior folder (it holds the training
    record export-prior writes) with a CLIP text model and a byte-level BPE tokenizer; else transformers is used."""
    if not any((folder / name).is_file() for name in SHAPESWORLD_PRIOR_INFO):
        return False
    try:
        config = json.loads((folder / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    needed = ("vocab.json", "merges.txt")
    return config.get("model_type") == "clip_text_model" and all((folder / "tokenizer" / n).is_file()
                                                                  for n in needed)


def load_bundled_text(folder: Path, encoder_id: str, device: torch.device):
    """A TextEncoder (the class every prior uses) over this module's tokenizer and transformer."""
    model = load_text_transformer(folder / "text_encoder")
    tokenizer = ClipBpeTokenizer(folder / "tokenizer", int(model.config.max_position_embeddings))
    return TextEncoder(tokenizer, model, encoder_id, device)
