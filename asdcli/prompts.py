"""Prompt libraries: the paper's JSON ({"train", "val", "test"} lists) or a text file with one prompt a line, or a
library shipped in the package by name (`shapesworld[:N]`, the paper's `magic3d_15`, `dreamfusion_415`,
`att3d_2520`, `instant3d_17000`)."""

from __future__ import annotations

import gzip
import json
import unicodedata
import warnings
from importlib.resources import files
from pathlib import Path

from asdcli.errors import UserError
from asdcli.safeio import check_path, decode_text, read_bounded
from asdcli.shapes.world.grammar import PromptError
from asdcli.shapes.world.library import build_library

SPLITS = ("train", "val", "test")
BUNDLED = "shapesworld"
# The paper's libraries, shipped gzipped in asdcli/assets/prompts/ (ScaleDreamer's, see ATTRIBUTION.md there).
PAPER_LIBRARIES = ("magic3d_15", "dreamfusion_415", "att3d_2520", "instant3d_17000")
# Named by a paper recipe but never published: a name that explains how to make the file instead.
UNPUBLISHED = {"cap3d_100k": "the paper's CP100k library of Cap3D captions"}
BUILD_HINT = 'a JSON {"train": [...], "val": [...], "test": [...]} or a text file with one prompt a line'


PROMPTS_MAX_BYTES = 64 << 20  # a 100k-prompt corpus is ~10 MB; /dev/zero or a wrong file fails at once


def _read_text(path: Path) -> str:
    """The file's text (bounded in size, a leading UTF-8 BOM dropped)."""
    path = check_path(path, "prompt file")
    if not path.exists():
        hint = f"; the bundled library is named {path.stem}" if path.stem in PAPER_LIBRARIES else ""
        raise UserError(f"{path}: prompt file not found{hint}; give {BUILD_HINT}, or a bundled library: "
                        f"{', '.join((BUNDLED, *PAPER_LIBRARIES))}")
    if path.is_dir():
        raise UserError(f"{path}: is a directory; pass a .json prompt library or a .txt file (one prompt a line)")
    data = read_bounded(path, PROMPTS_MAX_BYTES, "prompt file")
    return decode_text(data, path, "save the prompt file as UTF-8")


def _check_prompts(prompts: list, where: str, warn_duplicates: bool = True) -> list[str]:
    """Reject non-strings and empty prompts; drop duplicates, with a warning unless told not to (the bundled
    DL17k holds 3.7k repeats, documented with it)."""
    out: list[str] = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise UserError(f"{where}[{i}]: a prompt must be a string, got {type(p).__name__}")
        if not p.strip():
            raise UserError(f"{where}[{i}]: empty prompt; remove the entry or write the prompt")
        _check_unicode(p, f"{where}[{i}]")
        _check_visible(p, f"{where}[{i}]")
        out.append(" ".join(p.split()))
    unique = list(dict.fromkeys(out))
    if len(unique) != len(out) and warn_duplicates:
        warnings.warn(f"{where}: {len(out) - len(unique)} duplicate prompt(s) ignored", stacklevel=3)
    return unique


class UnpublishedLibrary(UserError):
    """A library the paper used but did not publish (a dry run can still report the recipe without it)."""


def _paper_library(name: str) -> dict[str, list[str]]:
    path = Path(str(files("asdcli") / "assets" / "prompts" / f"{name}.json.gz"))
    if not path.is_file():
        raise UserError(f"prompts.library: the bundled library {name} is missing from this installation "
                        f"({path}); reinstall asdcli or pass prompts.library=PATH to a copy")
    return _parse_json(gzip.decompress(path.read_bytes()).decode("utf-8"), name, warn_duplicates=False)


def _bundled_library(name: str) -> dict[str, list[str]]:
    """`shapesworld` (the whole ShapesWorld split) or `shapesworld:N` (train = the nested corpus of N
    prompts; val and test whole, so every corpus size is scored on the same prompts)."""
    size = name.partition(":")[2]
    if size and not (size.isdigit() and int(size) > 0):
        raise UserError(f"prompts.library: {name!r}: expected shapesworld or shapesworld:N with N > 0")
    try:
        return build_library(seed=0, corpus_size=int(size) if size else None)
    except PromptError as err:  # N beyond the train split
        raise UserError(str(err)) from None


def _check_unicode(prompt: str, where: str) -> None:
    """Lone surrogates (a JSON "\\ud800" escape, undecodable command-line bytes) cannot be encoded or named."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"{where}: the prompt holds an invalid character at position {exc.start} "
                        f"(a lone surrogate or undecodable byte); write it as UTF-8 text") from None


# Characters that draw nothing although Unicode calls them letters or symbols (fillers, a blank braille cell).
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _check_visible(prompt: str, where: str) -> None:
    """A prompt of only zero-width or invisible characters (U+200B, U+FEFF, U+2060, ...) reads as empty."""
    if not any(ch.isprintable() and not ch.isspace() and ch not in _BLANK_LETTERS
               and unicodedata.category(ch)[0] not in "CMZ" for ch in prompt):
        raise UserError(f"{where}: the prompt holds only invisible characters (zero-width spaces or marks); "
                        f"write the prompt as visible text")
    bad = next((ch for ch in prompt if unicodedata.category(ch) == "Cc" and not ch.isspace()), None)
    if bad is not None:  # ESC, BEL, NUL...: a prompt printed in a table or a warning must not drive the terminal
        raise UserError(f"{where}: the prompt holds the control character {ascii(bad)} at position "
                        f"{prompt.index(bad)}; remove it")
def _parse_json(text: str, p: str | Path, warn_duplicates: bool = True) -> dict[str, list[str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise UserError(f'{p}: malformed JSON: nested too deeply; expected {{"train": [...], ...}}') from None
    if isinstance(data, list):
        data = {s: data for s in SPLITS}
    if not isinstance(data, dict):
        raise UserError(f'{p}: expected {{"train": [...], "val": [...], "test": [...]}} or a list of prompts')
    unknown = [k for k in data if k not in SPLITS]
    if unknown:
        raise UserError(f"{p}: unknown split(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(SPLITS)}")
    lib = {}
    for split, items in data.items():
        if not isinstance(items, list):
            raise UserError(f"{p}: split {split!r} must be a list of prompts")
        lib[split] = _check_prompts(items, f"{p}:{split}", warn_duplicates)
    return lib


def check_library_source(name: str) -> None:
    """The cheap part of read_library, for a recipe not yet validated: an unpublished library's name or a
    missing file fails here, in a fraction of a second, before torch is imported."""
    if name == BUNDLED or name.startswith(BUNDLED + ":") or name in PAPER_LIBRARIES:
        return
    if name in UNPUBLISHED:
        raise UnpublishedLibrary(f"prompts.library: {name} ({UNPUBLISHED[name]}) is not published, so asd cannot "
                                 f"ship it; build {BUILD_HINT} and pass prompts.library=PATH")
    if not Path(name).exists():
        _read_text(Path(name))


def read_library(path: str | Path) -> dict[str, list[str]]:
    """All splits of a prompt library. A text file gives the same list for every split; the names
    `shapesworld[:N]` (built-in ShapesWorld, no file) and PAPER_LIBRARIES (shipped files) are not paths."""
    name = str(path)
    if name == BUNDLED or name.startswith(BUNDLED + ":"):
        return _bundled_library(name)
    if name in PAPER_LIBRARIES:
        return _paper_library(name)
    check_library_source(name)
    p = Path(path)
    text = _read_text(p)
    if p.suffix.lower() == ".json":
        lib = _parse_json(text, p)
    else:
        lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        prompts = _check_prompts(lines, str(p))
        lib = {s: prompts for s in SPLITS}
    if not any(lib.values()):
        raise UserError(f"{p}: the prompt file holds no prompts")
    return lib


def read_split(path: str | Path, split: str) -> list[str]:
    lib = read_library(path)
    if split not in SPLITS:
        raise UserError(f"--split: expected one of {', '.join(SPLITS)}, got {split!r}")
    prompts = lib.get(split, [])
    if not prompts:
        have = ", ".join(f"{k} ({len(v)})" for k, v in lib.items() if v)
        raise UserError(f"{path}: split {split!r} is empty or missing; splits present: {have}")
    return prompts


def check_prompt(prompt: str) -> str:
    """A single prompt from the command line: non-empty after trimming."""
    if not prompt or not prompt.strip():
        raise UserError('PROMPT: empty prompt; write what to generate, e.g. "a red cube"')
    _check_unicode(prompt, "PROMPT")
    _check_visible(prompt, "PROMPT")
    return " ".join(prompt.split())


def recipe_prompts(cfg) -> tuple[list[str], list[str]]:
    """The (train, val) prompts a resolved recipe trains on, as `asd train` reads them: `prompts.items` for both,
    or the library's `prompts.train_split` and `prompts.val_split` (val falls back to train when empty).
    Public for scripts (bench/); raises UserError naming the key to fix."""
    if cfg.prompts.library is None:
        items = _check_prompts(list(cfg.prompts.items), "prompts.items")
        return items, items
    lib = read_library(cfg.prompts.library)
    train, val = lib.get(cfg.prompts.train_split, []), lib.get(cfg.prompts.val_split, [])
    if not train:
        raise UserError(f"{cfg.prompts.library}: split {cfg.prompts.train_split!r} is empty "
                        f"(prompts.train_split); splits present: {', '.join(k for k, v in lib.items() if v)}")
    return train, val or train
