"""Prompt → file name: safe, bounded, deterministic, unique within a batch."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asdcli.mesh.names import assign_filenames, prompt_hash, safe_filename

SAFE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def test_readable_names():
    assert safe_filename("a red cube, on top of a blue sphere.") == "a_red_cube_on_top_of_a_blue_sphere"
    assert safe_filename("A Red Cube") == "a_red_cube"


def test_path_traversal_and_separators_are_removed():
    for prompt in ("../../x", "..\\..\\x", "/etc/passwd", "x/../../y", "C:\\x", "./.hidden"):
        name = safe_filename(prompt)
        assert SAFE.match(name), (prompt, name)
        assert not any(sep in name for sep in "/\\:.")
    assert safe_filename("../../x") == "x"


def test_empty_and_punctuation_only_prompts_get_a_name():
    assert safe_filename("") == "prompt"
    assert safe_filename("  ...!?  ") == "prompt"


def test_long_prompts_are_bounded_and_distinguished():
    a, b = "a " * 100 + "red cube", "a " * 100 + "blue cube"
    name_a, name_b = safe_filename(a), safe_filename(b)
    assert len(name_a) <= 80 and len(name_b) <= 80 and name_a != name_b
    assert name_a.endswith("-" + prompt_hash(a)) and SAFE.match(name_a)
    assert len(safe_filename("x" * 500, max_len=30)) <= 30


def test_non_ascii_is_transliterated_or_hex():
    assert safe_filename("café crème") == "cafe_creme"
    assert safe_filename("猫") == "u732b"
    assert safe_filename("a 🚀 ship") == "a_u1f680_ship"
    assert safe_filename("猫") != safe_filename("犬")


def test_windows_reserved_names():
    for prompt in ("CON", "con", "Nul", "COM1", "lpt9", "aux"):
        name = safe_filename(prompt)
        assert name.lower() not in {"con", "nul", "com1", "lpt9", "aux"} and SAFE.match(name)


def test_duplicates_and_collisions_are_resolved_deterministically():
    prompts = ["a red cube", "A red cube", "a red cube!", "a blue cube", "a red cube"]
    names = assign_filenames(prompts)
    assert set(names) == set(prompts)
    assert names["a blue cube"] == "a_blue_cube"  # no collision: the plain name
    colliding = [names[p] for p in ("a red cube", "A red cube", "a red cube!")]
    assert len(set(colliding)) == 3
    assert all(n.startswith("a_red_cube-") for n in colliding)
    assert names["a red cube"] == "a_red_cube-" + prompt_hash("a red cube")
    assert assign_filenames(list(reversed(prompts))) == names  # order does not matter; reruns agree


def test_a_suffixed_name_that_is_taken_gets_a_longer_hash():
    clash = "a red cube-" + prompt_hash("a red cube")  # a prompt whose plain name equals a suffixed one
    names = assign_filenames(["a red cube", "A red cube", clash])
    assert len(set(names.values())) == 3


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.text(max_size=120), max_size=8))
def test_names_are_always_safe_unique_and_bounded(prompts):
    names = assign_filenames(prompts)
    assert len(set(names.values())) == len(names) == len(set(prompts))
    for name in names.values():
        assert SAFE.match(name) and len(name) <= 80
        assert name not in {"con", "prn", "aux", "nul"}


def test_max_len_must_leave_room_for_a_hash():
    with pytest.raises(ValueError):
        safe_filename("x", max_len=5)
