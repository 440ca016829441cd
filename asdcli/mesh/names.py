"""Prompt → file name: safe on every file system, readable, deterministic and unique within a batch.

Rules of `safe_filename` (the result is a stem: the caller adds ".glb", ".png", ...):
- Unicode is NFKD-normalised and accents are dropped ("café" → "cafe"); other non-ASCII letters, digits and
  symbols become their code point in hex ("猫" → "u732b", "🚀" → "u1f680"), so different scripts never
  collapse to the same name; non-ASCII spaces and punctuation separate words.
- Lower case (case-insensitive file systems would merge "Cube" and "cube" anyway); every run of characters
  other than a–z, 0–9 and "-" becomes one "_"; leading/trailing "_" and "-" are stripped. No "/", "\\", "." or
  ":" survives, so "../../x" cannot leave the output folder and no name is hidden or has a second extension.
- Empty results become "prompt"; Windows device names (CON, NUL, COM1, ...) get a trailing "_".
- Longer than `max_len`: cut at a "_" boundary and suffixed with 8 hex digits of the prompt's SHA-1, so long
  prompts that share a prefix still get different names.
`assign_filenames` then gives every prompt whose name collides with another's (or with a name already taken in
the output folder) a SHA-1 suffix too, so "a red cube" and "a red cube." never share a file.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable

_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                     *(f"lpt{i}" for i in range(10))}
_UNSAFE_RUN = re.compile(r"[^a-z0-9-]+")
_HASH_LEN = 8


def prompt_hash(prompt: str, length: int = _HASH_LEN) -> str:
    """The first `length` hex digits of SHA-1 of the UTF-8 prompt: stable across runs and machines."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:length]


def _ascii_words(prompt: str) -> str:
    out = []
    for ch in unicodedata.normalize("NFKD", prompt):
        if ch.isascii():
            out.append(ch.lower())
        elif unicodedata.combining(ch):
            continue  # an accent split off by NFKD: "é" → "e" + U+0301
        elif unicodedata.category(ch)[0] in "LNS":  # letters, digits, symbols (emoji) carry meaning: keep
            out.append(f" u{ord(ch):x} ")
        else:
            out.append(" ")
    return _UNSAFE_RUN.sub("_", "".join(out)).strip("_-")


def _with_suffix(stem: str, suffix: str, max_len: int) -> str:
    """stem + "-" + suffix within max_len characters, cutting the stem at a "_" boundary when there is one."""
    room = max(max_len - len(suffix) - 1, 1)
    if len(stem) > room:
        cut = stem[:room]
        boundary = cut.rfind("_")
        stem = cut[:boundary] if boundary >= room // 2 else cut
    return f"{stem.strip('_-')}-{suffix}"


def safe_filename(prompt: str, max_len: int = 80) -> str:
    """A safe, readable file stem for `prompt` (see the module docstring); at most `max_len` characters."""
    if max_len < _HASH_LEN + 2:
        raise ValueError(f"max_len must be at least {_HASH_LEN + 2}, got {max_len}")
    stem = _ascii_words(prompt) or "prompt"
    if len(stem) > max_len:
        return _with_suffix(stem, prompt_hash(prompt), max_len)
    if stem in _WINDOWS_RESERVED:
        stem += "_"
    return stem


def assign_filenames(prompts: Iterable[str], max_len: int = 80, taken: Iterable[str] = (),
                     keep: dict[str, str] | None = None) -> dict[str, str]:
    """Unique file stems for the distinct prompts: {prompt: stem}.

    keep: {prompt: stem} names already recorded for these prompts (an earlier export), reused as they are.
    taken: stems that belong to something else (another prompt's file in the output folder, an unknown file).
    A prompt keeps `safe_filename(prompt)` unless another distinct prompt maps to the same stem or the stem is
    taken; then it gets "-<sha1 prefix>". Given the same keep/taken, the result depends only on the set of
    prompts (not on their order), so reruns give the same names. If a suffixed name still collides, the hash
    gets longer.
    """
    distinct = sorted(set(prompts))
    names = {p: stem for p, stem in (keep or {}).items() if p in set(distinct)}
    blocked = set(taken) | set(names.values())
    groups: dict[str, list[str]] = defaultdict(list)
    for prompt in distinct:
        if prompt not in names:
            groups[safe_filename(prompt, max_len)].append(prompt)
    for stem, group in groups.items():
        if len(group) == 1 and stem not in blocked:
            names[group[0]] = stem
            blocked.add(stem)
    for stem, group in sorted(groups.items()):
        for prompt in (p for p in group if p not in names):
            length = _HASH_LEN
            name = _with_suffix(stem, prompt_hash(prompt, length), max_len)
            while name in blocked and length < min(40, max_len - 2):
                length += 4
                name = _with_suffix(stem, prompt_hash(prompt, length), max_len)
            names[prompt] = name
            blocked.add(name)
    return {prompt: names[prompt] for prompt in distinct}
