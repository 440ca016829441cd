"""bench/ reaches asdcli only through public names, and the public helpers it uses behave as `asd train` does."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from asdcli.errors import UserError
from asdcli.prompts import recipe_prompts
from asdcli.recipe import flag_overrides, load_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny_cpu.yaml"
SCRIPTS = sorted(p for p in (ROOT / "bench").rglob("*.py") if "results" not in p.parts)


def _private_imports(path: Path) -> list[str]:
    """`from asdcli.x import _y` and imports of `asdcli.x._y` modules in one file, as 'line: name'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "asdcli":
            parts = node.module.split(".") + [a.name for a in node.names]
            found += [f"{node.lineno}: {node.module}.{a.name}" for a in node.names
                      if any(p.startswith("_") for p in parts[:-len(node.names)] + [a.name])]
        elif isinstance(node, ast.Import):
            found += [f"{node.lineno}: {a.name}" for a in node.names
                      if a.name.split(".")[0] == "asdcli" and any(p.startswith("_") for p in a.name.split("."))]
    return found


def test_bench_imports_no_private_asdcli_name():
    assert len(SCRIPTS) > 20  # the suite and the probes are both scanned
    bad = {str(p.relative_to(ROOT)): hits for p in SCRIPTS if (hits := _private_imports(p))}
    assert not bad, f"bench/ imports private asdcli names (make them public where they live): {bad}"


def test_scan_sees_a_private_import(tmp_path):
    probe = tmp_path / "x.py"
    probe.write_text("def f():\n    from asdcli.commands import _flags, ok\n    import asdcli._hidden\n")
    assert _private_imports(probe) == ["2: asdcli.commands._flags", "3: asdcli._hidden"]


def test_recipe_prompts_reads_the_library_splits_and_falls_back_to_train(tmp_path):
    lib = tmp_path / "lib.json"
    lib.write_text(json.dumps({"train": ["a red cube", "a blue sphere"], "val": [], "test": ["a cone"]}))
    cfg = load_recipe(TINY, [f"prompts.library={lib}"])
    assert recipe_prompts(cfg) == (["a red cube", "a blue sphere"], ["a red cube", "a blue sphere"])
    cfg = load_recipe(TINY, [f"prompts.library={lib}", "prompts.train_split=val"])
    with pytest.raises(UserError, match="split 'val' is empty .*prompts.train_split.*train, test"):
        recipe_prompts(cfg)


def test_flag_overrides_map_the_command_flags_to_recipe_keys():
    assert flag_overrides(5, Path("runs/x"), None) == {"train.steps": 5, "output.dir": "runs/x"}
    assert flag_overrides(None, None, "cpu") == {"train.device": "cpu"}
    with pytest.raises(UserError, match="--steps: must be >= 1, got 0"):
        flag_overrides(0, None, None)


@pytest.mark.slow
@pytest.mark.parametrize("script", [p for p in SCRIPTS if p.name not in {"common.py", "paper.py"}
                                    and not p.name.startswith(("study_",))], ids=lambda p: p.name)
def test_every_bench_script_answers_help_from_the_repo_root(script):
    done = subprocess.run([sys.executable, str(script.relative_to(ROOT)), "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
