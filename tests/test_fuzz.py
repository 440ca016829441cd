"""Fuzzing the two readers of user files (hypothesis, bounded budget): the recipe loader and the prompt-file
reader. Any input either loads or raises the user-error path (UserError → exit 2 with one line); nothing else
escapes. A few properties of what loads are checked too (recipes dump and reload to an equal config; prompts
are non-empty, trimmed, unique and valid UTF-8)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from asdcli.cli import app
from asdcli.config import RunConfig, to_plain
from asdcli.errors import UserError
from asdcli.prompts import SPLITS, check_prompt, read_library, read_split
from asdcli.recipe import dump_recipe, load_dumped, load_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny_cpu.yaml"
runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore:.*duplicate prompt:UserWarning")  # expected for duplicate input

# Bounded and reproducible: derandomized, no example database written into the repository.
FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CLI_FUZZ = settings(FUZZ, max_examples=40)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _flatten(data, prefix=""):
    if isinstance(data, dict):
        for key, val in data.items():
            yield from _flatten(val, f"{prefix}{key}.")
    yield prefix.rstrip(".")


def _get(data, dotted: str):
    for part in dotted.split("."):
        data = data[part]
    return data


TINY_RAW = yaml.safe_load(TINY.read_text())
KEY_PATHS = sorted({p for p in _flatten(to_plain(load_recipe(TINY))) if p})

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.integers(-3, 64),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["tiny-random", "triplane", "asd", "sds", "nerf", "random", "cpu", "linear"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.sampled_from(["linear", "piecewise", "kind"]),
                                        inner, max_size=4), max_leaves=8)
small_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(-10, 100),
                                      st.text(max_size=8)),
                            lambda inner: st.lists(inner, max_size=3), max_leaves=4)
key_paths = st.sampled_from(KEY_PATHS) | st.text(min_size=1, max_size=12)
TINY_PLAIN = to_plain(load_recipe(TINY))
LEAVES = {p: v for p in KEY_PATHS if not isinstance(v := _get(TINY_PLAIN, p), dict)}


def _like(value, small: bool):
    """Values of the same YAML type as `value` (so mutations get past the type checks into range checks,
    cross-field checks and component construction); `small` bounds sizes for building on the meta device."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-2, 48) if small else st.integers(-5, 64) | st.integers()
    if isinstance(value, float):
        return (st.floats(-2, 100) if small else st.floats(allow_nan=True, allow_infinity=True)
                | st.sampled_from([0.0, -1.0, 1e-9, 179.9, 180.0]))
    if isinstance(value, str):
        return st.text(max_size=12) | st.sampled_from(["", "auto", "cpu", "cuda:0", "random", "solid", "x/y"])
    if isinstance(value, list) and value:
        return st.lists(_like(value[0], small), max_size=4)
    return small_values if small else values


def _typed_mutations(small: bool):
    paths = st.sampled_from(sorted(LEAVES))
    return st.lists(paths.flatmap(lambda p: st.tuples(st.just(p), _like(LEAVES[p], small))), min_size=1,
                    max_size=3)


def _set(data: dict, dotted: str, value) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _mutated(mutations) -> dict:
    raw = json.loads(json.dumps(TINY_RAW))  # a deep copy
    for dotted, value in mutations:
        _set(raw, dotted, value)
    return raw


def _load_or_user_error(**kwargs) -> RunConfig | None:
    try:
        return load_recipe(**kwargs)
    except UserError:
        return None


def _check_round_trip(cfg: RunConfig | None) -> None:
    """What loads is what a run directory stores: its dump reloads to an equal config."""
    if cfg is not None:
        assert load_dumped(dump_recipe(cfg)) == cfg


# ------------------------------------------------------------------------------------------ the recipe loader
@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_recipe_loader_arbitrary_text(scratch, text):
    path = scratch / "any.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    _check_round_trip(_load_or_user_error(path=path))


@FUZZ
@given(data=st.binary(max_size=200))
def test_recipe_loader_arbitrary_bytes(scratch, data):
    path = scratch / "bytes.yaml"
    path.write_bytes(data)
    _check_round_trip(_load_or_user_error(path=path))


@FUZZ
@given(mutations=st.lists(st.tuples(key_paths, values), min_size=1, max_size=3) | _typed_mutations(small=False))
def test_recipe_loader_mutated_recipes(scratch, mutations):
    path = scratch / "mutated.yaml"
    path.write_text(yaml.safe_dump(_mutated(mutations), allow_unicode=True), encoding="utf-8")
    _check_round_trip(_load_or_user_error(path=path))


@FUZZ
@given(overrides=st.lists(st.text(max_size=30) | st.builds(lambda k, v: f"{k}={v}", key_paths, st.text(max_size=15)),
                          max_size=3))
def test_recipe_overrides_arbitrary(overrides):
    _check_round_trip(_load_or_user_error(path=TINY, overrides=overrides))


@CLI_FUZZ
@given(mutations=_typed_mutations(small=True) | st.lists(st.tuples(st.sampled_from(KEY_PATHS), small_values),
                                                          min_size=1, max_size=2))
def test_recipe_through_the_cli(scratch, mutations):
    """`asd train --dry-run` (validates, builds the generator on the meta device): exit 0, or exit 2 with one
    line; nothing is written either way."""
    path = scratch / "cli.yaml"
    path.write_text(yaml.safe_dump(_mutated(mutations), allow_unicode=True), encoding="utf-8")
    out = scratch / "never"
    res = runner.invoke(app, ["train", str(path), "--dry-run", "--out", str(out)], prog_name="asd")
    _assert_exit_0_or_one_line_2(res)
    assert not out.exists()


def _assert_exit_0_or_one_line_2(res) -> None:
    assert res.exit_code in (0, 2), f"exit {res.exit_code}: {res.stderr!r} {res.exception!r}"
    if res.exit_code == 2:
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in res.stdout + res.stderr


# ------------------------------------------------------------------------------------- the prompt-file reader
def _check_library(lib: dict[str, list[str]]) -> None:
    assert set(lib) <= set(SPLITS) and any(lib.values())
    for prompts in lib.values():
        assert len(prompts) == len(set(prompts))
        for p in prompts:
            assert p and p == " ".join(p.split())  # non-empty, trimmed, one space between words
            p.encode("utf-8")  # no lone surrogates


def _read_or_user_error(path: Path) -> None:
    try:
        lib = read_library(path)
    except UserError:
        return
    _check_library(lib)


surrogates = st.sampled_from(["\ud800", "\udfff", "\udcff"])
prompt_text = st.text(alphabet=st.characters() | surrogates, max_size=20)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | prompt_text,
                           lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.sampled_from([*SPLITS, "dev"]) | st.text(max_size=5), inner,
                                             max_size=4), max_leaves=12)
libraries = st.one_of(
    json_values,
    st.lists(prompt_text, max_size=6),
    st.dictionaries(st.sampled_from(SPLITS), st.lists(prompt_text | st.integers() | st.none(), max_size=5),
                    max_size=3),
)


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".txt", ".json", ".prompts"]))
def test_prompt_reader_arbitrary_bytes(scratch, data, suffix):
    path = scratch / f"bytes{suffix}"
    path.write_bytes(data)
    _read_or_user_error(path)


@FUZZ
@given(text=st.text(alphabet=st.characters() | st.sampled_from(["\n", "\r", " ", "#", "\t"]), max_size=200))
def test_prompt_reader_arbitrary_text_file(scratch, text):
    path = scratch / "text.txt"
    path.write_text(text, encoding="utf-8")
    _read_or_user_error(path)


@FUZZ
@given(library=libraries, split=st.sampled_from([*SPLITS, "dev", ""]))
def test_prompt_reader_json_libraries(scratch, library, split):
    path = scratch / "lib.json"
    path.write_text(json.dumps(library, allow_nan=True), encoding="utf-8")  # ensure_ascii escapes surrogates
    _read_or_user_error(path)
    try:
        prompts = read_split(path, split)
    except UserError:
        return
    assert prompts and split in SPLITS


@FUZZ
@given(prompt=prompt_text)
def test_command_line_prompt(prompt):
    try:
        out = check_prompt(prompt)
    except UserError:
        return
    assert out and out == " ".join(out.split()) and out.encode("utf-8")


@CLI_FUZZ
@given(library=libraries)
def test_prompt_file_through_the_cli(scratch, library):
    """A prompt library named by a recipe (`asd train --dry-run prompts.library=FILE`): exit 0 or one line + 2."""
    path = scratch / "cli.json"
    path.write_text(json.dumps(library, allow_nan=True), encoding="utf-8")
    res = runner.invoke(app, ["train", str(TINY), f"prompts.library={path}", "--dry-run", "--json",
                              "--out", str(scratch / "never")], prog_name="asd")
    _assert_exit_0_or_one_line_2(res)
    if res.exit_code == 0:
        assert json.loads(res.stdout)["num_prompts"] >= 1


def test_nan_and_huge_values_are_user_errors():
    """Two fixed examples the fuzzers rely on: non-finite floats and absurd sizes never reach the engine."""
    for override in ("train.lr=.nan", "render.resolution=.inf", "render.resolution=1e9", "train.steps=1e400"):
        with pytest.raises(UserError):
            load_recipe(TINY, [override])
    assert math.isfinite(load_recipe(TINY, ["train.lr=1e-3"]).train.lr.value)


# ---------------------------------------------------------------------------- messages and YAML bounds
@FUZZ
@given(text=st.text(max_size=5000) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_message_values_are_one_printable_bounded_line(text):
    """Whatever a key, value or prompt holds (escape sequences, newlines, bidi marks), a message shows it on one
    printable line, a value at most SHOWN_MAX characters."""
    from asdcli.errors import LINE_MAX, SHOWN_MAX, safe_line, shown

    line, value = safe_line(f"error: {text}"), shown(text)
    assert line.isprintable() and len(line) <= LINE_MAX
    assert value.isprintable() and len(value) <= SHOWN_MAX


@FUZZ
@given(depth=st.integers(1, 12), width=st.integers(1, 12))
def test_yaml_aliases_are_measured_before_they_are_built(depth, width):
    """A nest of anchors `depth` deep and `width` wide expands to ~width^depth values: loaded when that is under
    the bound, refused (ConfigError, never a MemoryError or a hang) when over."""
    from asdcli.errors import ConfigError
    from asdcli.safeio import YAML_MAX_NODES, safe_yaml

    levels = [f"&a0 [{', '.join(['x'] * width)}]"]
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    text = "[" + ", ".join(levels) + "]"
    expanded = 1 + sum(sum(width ** k for k in range(level + 2)) for level in range(depth))
    if expanded > YAML_MAX_NODES:
        with pytest.raises(ConfigError, match="too large after expanding aliases"):
            safe_yaml(text, "fuzz")
    else:
        data = safe_yaml(text, "fuzz")
        assert len(data) == depth and len(data[-1]) == width
