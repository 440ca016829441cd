"""Reading input files without trusting them: a size bound before anything is read whole (so /dev/zero or a
huge file fails at once), one line for every OS failure (a symlink loop, a NUL byte in a path), a leading UTF-8
BOM dropped, and YAML parsed with node, alias and duplicate-key checks before any value is built."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import yaml

from asdcli.errors import ConfigError, UserError, shown

RECIPE_MAX_BYTES = 1 << 20  # a recipe is a few hundred lines
JSON_MAX_BYTES = 16 << 20  # state.json / optimizer.json / index.json of a run or export folder
YAML_MAX_NODES = 100_000  # scalars + lists + mappings after aliases are expanded (a recipe has a few hundred)
MiB = 1 << 20


def check_path(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path, refusing the characters no file system accepts (a NUL byte) as one line."""
    text = os.fspath(path)
    if "\x00" in str(text):
        raise UserError(f"{what}: the path {shown(str(text))} holds a NUL byte; write the file name without it")
    return Path(text)


def read_bounded(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The bytes of `path`, at most `limit` of them (more is a UserError before reading the rest)."""
    p = check_path(path, what)
    try:
        with open(p, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{p}: {what} not found") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a directory; pass a {what}") from None
    except OSError as exc:
        reason = "a symlink loop" if exc.errno == errno.ELOOP else exc.strerror or type(exc).__name__
        raise UserError(f"{p}: cannot read ({reason})") from None
    if len(data) > limit:
        raise UserError(f"{p}: larger than {limit // MiB} MiB; a {what} is far smaller (is it the right file?)")
    return data


def decode_text(data: bytes, path: str | os.PathLike, fix: str) -> str:
    """UTF-8 text without a leading byte-order mark (Windows editors add one)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 (byte {exc.start}); {fix}") from None
    return text[1:] if text.startswith("\ufeff") else text


class _Walk:
    """Counts the nodes of a composed YAML document as they would be after alias expansion (memoised, so a
    billion-laughs document is measured in microseconds) and finds duplicate mapping keys."""

    def __init__(self, where: str, limit: int):
        self.where, self.limit, self.sizes = where, limit, {}

    def size(self, node: yaml.Node) -> int:
        if id(node) in self.sizes:
            return self.sizes[id(node)]
        self.sizes[id(node)] = 1  # a recursive alias counts once (the constructor builds it as a cycle)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(self.size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            self._no_duplicates(node)
            total += sum(self.size(k) + self.size(v) for k, v in node.value)
        if total > self.limit:
            raise ConfigError(f"{self.where}: YAML too large after expanding aliases (over {self.limit:,} "
                              f"values at line {node.start_mark.line + 1}); write the values out, a recipe "
                              f"needs no anchors")
        self.sizes[id(node)] = total
        return total

    def _no_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            if key.value in seen:
                raise ConfigError(f"{self.where}: key {shown(key.value)} appears twice (lines {seen[key.value]} "
                                  f"and {key.start_mark.line + 1}); merge the two into one")
            seen[key.value] = key.start_mark.line + 1


def safe_yaml(text: str, where: str, limit: int = YAML_MAX_NODES):
    """yaml.safe_load with bounds: no tags beyond plain data, at most `limit` values after alias expansion, no
    duplicate keys. Raises ConfigError (the caller's wording for malformed YAML stays its own)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _Walk(where, limit).size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()
