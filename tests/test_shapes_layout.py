"""ShapesWorld's layering: the world (asdcli/shapes/world) imports nothing of asdcli but itself."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

WORLD = Path(__file__).resolve().parents[1] / "asdcli" / "shapes" / "world"
ALLOWED_THIRD_PARTY = {"torch"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, module level and inside functions alike."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}:{node.lineno}: use absolute imports"
            out.append((node.lineno, node.module or ""))
    return out


def _allowed(module: str) -> bool:
    top = module.split(".")[0]
    return (module == "asdcli.shapes.world" or module.startswith("asdcli.shapes.world.")
            or top in ALLOWED_THIRD_PARTY or (top != "asdcli" and top in sys.stdlib_module_names))


def test_world_imports_only_stdlib_torch_and_itself():
    files = sorted(WORLD.glob("*.py"))
    assert {f.stem for f in files} >= {"grammar", "scenes", "raytrace", "metrics", "library"}
    bad = [f"{f.name}:{line} imports {mod}" for f in files for line, mod in _imports(f) if not _allowed(mod)]
    assert not bad, "the world must not import the core: " + "; ".join(bad)


def test_the_scan_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import json\n\ndef f():\n    from asdcli.render.cameras import get_rays\n")
    found = _imports(probe)
    assert (4, "asdcli.render.cameras") in found and not _allowed("asdcli.render.cameras")
    assert _allowed("json") and _allowed("asdcli.shapes.world.grammar") and not _allowed("asdcli.shapes.vocab")
