"""The test suite's own layout (tests/README.md): its folders mirror asdcli's packages, and a test module never
imports another test module (shared code lives in tests/helpers/)."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
PACKAGE = TESTS.parent / "asdcli"
# Folders that are not an asdcli package by design: what they hold is in tests/README.md.
OWN = {"architecture", "bench", "cli", "helpers", "fixtures"}


def _imported_modules(path: Path) -> list[str]:
    """Every module an `import` or `from ... import` in `path` names, at any depth (relative ones as '.x')."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    return names


def test_every_test_folder_is_a_package_folder_or_a_named_one():
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert folders - OWN <= packages, f"test folders that match no asdcli package: {sorted(folders - OWN - packages)}"
    assert {"engine", "priors", "generators", "losses", "render", "mesh", "shapes"} <= folders
    assert all((TESTS / f / "__init__.py").exists() for f in folders - {"fixtures"})  # importable as tests.<f>


def test_no_test_module_imports_another():
    files = sorted(TESTS.rglob("*.py"))
    assert len([p for p in files if p.name.startswith("test_")]) > 40  # the scan really reads the suite
    bad = [f"{p.relative_to(TESTS)}: {name}" for p in files for name in _imported_modules(p)
           if name.rpartition(".")[2].startswith("test_") or name.startswith("conftest")
           or name.startswith(".")]
    assert bad == [], "import shared code from tests.helpers instead"
