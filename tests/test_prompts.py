"""Prompt files: JSON libraries, text files, the built-in ShapesWorld library, and the errors."""

import json

import pytest

from asdcli.errors import UserError
from asdcli.prompts import check_prompt, read_library, read_split


def test_json_and_text(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps({"train": ["a", "b"], "val": ["c"], "test": []}))
    assert read_library(tmp_path / "l.json")["train"] == ["a", "b"]
    (tmp_path / "p.txt").write_text("# comment\na  red\tcube\n\nblue sphere\n")
    lib = read_library(tmp_path / "p.txt")
    assert lib["train"] == lib["test"] == ["a red cube", "blue sphere"]


def test_duplicates_warn_and_are_dropped(tmp_path):
    (tmp_path / "p.txt").write_text("a\nb\na\n")
    with pytest.warns(UserWarning, match="1 duplicate prompt"):
        assert read_library(tmp_path / "p.txt")["train"] == ["a", "b"]


@pytest.mark.parametrize("name, content, message", [
    ("e.txt", "", "holds no prompts"),
    ("m.json", "{", "malformed JSON at line 1"),
    ("n.json", '{"train": [""]}', "empty prompt"),
    ("s.json", '{"train": ["a"], "dev": ["b"]}', "unknown split"),
    ("t.json", '{"train": [3]}', "a prompt must be a string"),
    ("u.json", '"just a string"', "expected"),
])
def test_bad_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=message):
        read_library(tmp_path / name)


def test_non_utf8(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"a red cube\n\xff\xfe\n")
    with pytest.raises(UserError, match="not UTF-8"):
        read_library(tmp_path / "b.txt")


def test_missing_split_names_the_ones_present(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps({"train": ["a"]}))
    with pytest.raises(UserError, match=r"split 'test' is empty or missing; splits present: train \(1\)"):
        read_split(tmp_path / "l.json", "test")


def test_shapesworld_builtin_and_nested_corpora():
    full, small = read_library("shapesworld"), read_library("shapesworld:16")
    assert len(small["train"]) == 16 and set(small["train"]) <= set(full["train"])
    assert small["test"] == full["test"] and not set(full["test"]) & set(full["train"])
    with pytest.raises(UserError, match="shapesworld:N"):
        read_library("shapesworld:zero")


def test_check_prompt():
    assert check_prompt("  a   red cube ") == "a red cube"
    with pytest.raises(UserError, match="empty prompt"):
        check_prompt("   ")
