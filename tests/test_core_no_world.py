"""The core knows no world: no module of the core packages imports asdcli.shapes (ShapesWorld, a world and an app
on top of the core), at module level or inside a function. The world reaches the core through the registry
(`prior.kind: shapesworld`) and the commands, never the other way."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "asdcli"
CORE = ("priors", "engine", "render", "generators", "losses", "mesh", "evaluate.py")
WORLD = "asdcli.shapes"
# `bundled:` asset resolution is moving out of asdcli/shapes/bundled.py into a core module (asdcli/bundled.py);
# until that lands these names may still be imported from there. Empty this when it does.


def _imports(path: Path, root: Path) -> list[tuple[int, str, set[str]]]:
    """(line, module, names) of every import in the file under `root` (the folder holding asdcli/), wherever
    it sits (relative imports resolved)."""
    parts = path.relative_to(root).with_suffix("").parts
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, set()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(parts[: len(parts) - node.level]) + "." if node.level else ""
            module = (base + (node.module or "")).rstrip(".")
            names = {alias.name for alias in node.names}
            # `from asdcli import shapes` imports the world too
            if module == WORLD.rpartition(".")[0]:
                out += [(node.lineno, f"{module}.{n}", set()) for n in names if f"{module}.{n}" == WORLD]
            out.append((node.lineno, module, names))
    return out


def _core_files() -> list[Path]:
    files = []
    for name in CORE:
        path = PACKAGE / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def world_imports(files: list[Path], root: Path = PACKAGE.parent) -> list[str]:
    """"FILE:LINE imports MODULE" for each import of the world in `files`."""
    found = []
    for path in files:
        for line, module, _names in _imports(path, root):
            if module != WORLD and not module.startswith(WORLD + "."):
                continue
            found.append(f"{path.relative_to(root)}:{line} imports {module}")
    return found


def test_core_modules_do_not_import_shapes():
    files = _core_files()
    assert len(files) > 30 and all(f.is_file() for f in files)  # the scan sees the packages it claims to
    assert world_imports(files) == []


def test_the_scan_finds_world_imports_anywhere_in_a_module(tmp_path):
    """Module level, inside functions, relative, `from asdcli import shapes`: each one is reported."""
    pkg = tmp_path / "asdcli" / "priors"
    pkg.mkdir(parents=True)
    sources = {"a.py": "import asdcli.shapes.grammar\n",
               "b.py": "def f():\n    from asdcli.shapes.grammar import caption_as_seen\n",
               "c.py": "from ..shapes import prior\n",
               "d.py": "from asdcli import shapes\n",
               "e.py": "from asdcli.shapes.bundled import is_shapesworld_prior\n",
               "f.py": "from asdcli.shapes.bundled import resolve_bundled, is_shapesworld_prior\n"}
    for name, text in sources.items():
        (pkg / name).write_text(text)
    found = world_imports(sorted(pkg.glob("*.py")), tmp_path)
    assert [f.split(":")[0] for f in found] == [f"asdcli/priors/{n}.py" for n in "abcdef"]
