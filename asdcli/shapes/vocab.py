"""The ShapesWorld tokenizer: a CLIP byte-level BPE whose whole words are the grammar's words.

Vocabulary: the 256 byte symbols and their end-of-word forms (so ANY text tokenises: unknown words fall back to
byte pieces, which the CLI can warn about with `grammar.unknown_words`), the merges that turn every grammar word
(shapes, colours, sizes, articles, relation words, the view-suffix words) into one token, then BOS and EOS (EOS
has the highest id, as in OpenAI's vocabulary, so CLIPTextModel's pooling finds it under either rule; padding is
EOS too). "," is a byte token already. Both bundled models (prior text encoder and CLIP) share this tokenizer.

Context length MAX_LENGTH = 20 tokens: the longest grammar caption ("an orange cylinder on top of an orange
cylinder, overhead view") is 14 with BOS/EOS, and a pair with sizes ("a large red cube on top of a small blue
sphere, overhead view") is 17.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from asdcli.clip_model import byte_unicode_alphabet
from asdcli.shapes.world.grammar import VOCABULARY

MAX_LENGTH = 20
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Sorted so the merge list (and the token ids) are the same on every run.
WORDS: tuple[str, ...] = tuple(sorted(VOCABULARY | {"view", "front", "side", "back", "overhead"}))


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one pre-tokenised word: symbols with "</w>" on the last, lowest-rank pair merged first."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts[:-1], parts[1:], strict=True))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        a, b = parts[i], parts[i + 1]
        merged, j = [], 0
        while j < len(parts):  # merge every occurrence of the pair, left to right, as the reference BPE does
            if j + 1 < len(parts) and parts[j] == a and parts[j + 1] == b:
                merged.append(a + b)
                j += 2
            else:
                merged.append(parts[j])
                j += 1
        parts = merged
    return parts


def vocab_and_merges(words: tuple[str, ...] = WORDS) -> tuple[dict[str, int], list[str]]:
    """Byte alphabet (+ "</w>" forms), merges that make each word one token, then BOS and EOS.

    Merges are appended until each word's BPE is a single piece: a new merge always has the highest rank, so it
    applies after the ones before it and cannot split a word that already came out whole."""
    alphabet = byte_unicode_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        while len(parts := _bpe(word, ranks)) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, [f"{a} {b}" for a, b in merges]


def write_vocab(folder: str | Path) -> Path:
    """vocab.json + merges.txt of the ShapesWorld BPE into `folder` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def build_tokenizer(max_length: int = MAX_LENGTH) -> Any:
    """A transformers CLIPTokenizer over the ShapesWorld vocabulary (pad = EOS), `model_max_length` tokens."""
    # lazy: transformers is heavy: the bundled text path tokenizes without it
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_vocab(tmp)
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=max_length, pad_token=EOS)


def token_ids(tokenizer: Any, texts: list[str], max_length: int) -> Any:
    """Token ids [N, L] long as `asdcli.priors.text.TextEncoder.tokenize` makes them for prompts that fit (BOS,
    content, EOS, EOS padding); longer ones are cut keeping EOS, as there."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    for row in tokenizer(list(texts), truncation=True, max_length=max_length + 1)["input_ids"]:
        row = list(row) if len(row) <= max_length else list(row[: max_length - 1]) + [eos]
        rows.append(row + [pad] * (max_length - len(row)))
    return torch.tensor(rows, dtype=torch.long)
