"""The package's import graph (read from source by tests/helpers/import_graph.py): no cycles among modules, counting
imports inside functions too; the ground floor imports nothing above it; generators and render name the shared
types without importing priors; imports sit at the top of modules below the CLI edge, and a lazy third-party
import says why."""

import subprocess
import sys
from pathlib import Path

from tests.helpers.import_graph import ROOT, build_graph, find_cycles, lazy_imports

GRAPH = build_graph()
# Modules every layer may import: they import no project module but asdcli.errors (and stdlib, torch).
GROUND_FLOOR = ("asdcli.errors", "asdcli.atomic", "asdcli.suggest", "asdcli.conditioning", "asdcli.bundled")
# The CLI edge: the only modules that may import project modules inside functions, so `asd --help` (and the
# shapes CLI's) imports no torch, and `asd train` checks its prompts and weights before torch loads (commands.py
# imports the torch-free core at its top and the rest inside each command).
CLI_EDGE = ("asdcli", "asdcli.__main__", "asdcli.cli", "asdcli.commands", "asdcli.shapes.__main__")


def _show(cycles: list[list[str]]) -> str:
    return "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def test_no_import_cycles_among_modules():
    cycles = find_cycles(GRAPH.edges(include_functions=True))
    assert not cycles, _show(cycles)


def test_no_import_cycles_among_packages():
    """Folded to the package's first level (asdcli.engine, asdcli.shapes, asdcli.cli, …; the world apart from the
    shapes app) the graph is still layered: e.g. the shapes app shares the CLI's look through cli_style rather
    than importing the CLI, which imports the app."""
    def layer(module: str) -> str:  # the ShapesWorld world (imports nothing of asdcli) is a layer of its own
        return "asdcli.shapes.world" if module.startswith("asdcli.shapes.world") else ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for module, targets in GRAPH.edges(include_functions=True).items():
        packages.setdefault(layer(module), set()).update(layer(t) for t in targets)
    for top, targets in packages.items():
        targets.discard(top)
    cycles = find_cycles(packages)
    assert not cycles, _show(cycles)


def test_the_ground_floor_imports_nothing_above_it():
    assert set(GROUND_FLOOR) <= GRAPH.modules
    for module in GROUND_FLOOR:
        above = GRAPH.edges()[module] - {"asdcli.errors"}
        assert not above, f"{module} imports {sorted(above)}: the ground floor may import only asdcli.errors"


def test_generators_and_render_do_not_import_priors():
    edges = GRAPH.edges()
    for module in sorted(GRAPH.modules):
        if module.startswith(("asdcli.generators", "asdcli.render")):
            priors = sorted(t for t in edges[module] if t.startswith("asdcli.priors"))
            assert not priors, f"{module} imports {priors}; shared types live in asdcli.conditioning"


def test_only_the_cli_edge_imports_project_modules_inside_functions():
    assert set(CLI_EDGE) <= GRAPH.modules
    hidden = {m: sorted(t) for m, t in GRAPH.in_function.items() if t and m not in CLI_EDGE}
    assert not hidden, f"imports inside functions below the CLI edge (move them to the module's top): {hidden}"


def test_lazy_third_party_imports_below_the_edge_say_why():
    silent = [f"{i.module}:{i.line} {i.names}" for i in lazy_imports()
              if i.module not in CLI_EDGE and not i.project and not i.says_why]
    assert not silent, ("lazy imports without a why-comment (`# lazy: <why>` above them; or move them to the "
                        "module's top): " + "; ".join(silent))


def test_commands_imports_no_torch_before_the_early_checks():
    """commands.py imports the core at its top: only torch-free modules, so a missing weight or prompt library
    fails within a second, before torch loads (its torch-pulling imports stay inside the commands)."""
    code = ("import sys; import asdcli.commands; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT.parent, timeout=120).stdout
    assert out.strip() == "[]"


def test_lazy_imports_are_found_with_their_reason(tmp_path: Path):
    """A planted package: a commented, an uncommented, an optional (try/except ImportError) and a project import
    inside functions; the module-level and TYPE_CHECKING ones are not lazy."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "import json\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import numpy\n"
        "def f():\n    # lazy: heavy\n    import torch\n\n    from scipy import sparse\n    return torch, sparse\n"
        "def g():\n    import yaml\n    from . import b\n    return yaml, b\n"
        "def h():\n    try:\n        import peft\n    except (ImportError, OSError):\n        peft = None\n"
        "    return peft\n")
    (pkg / "b.py").write_text("def k():\n    import os  # stdlib: still says why\n    return os\n")
    found = {(i.module, i.names): (i.project, i.says_why) for i in lazy_imports(pkg)}
    assert found == {("pkg.a", "torch"): (False, True), ("pkg.a", "scipy"): (False, True),
                     ("pkg.a", "yaml"): (False, False), ("pkg.a", "pkg"): (True, False),
                     ("pkg.a", "peft"): (False, True), ("pkg.b", "os"): (False, True)}


def test_the_builder_sees_function_imports_and_reports_the_cycle(tmp_path: Path):
    """A planted package: a imports b at module level, b imports a inside a function, c imports a relatively."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\nfrom pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg import a\n    return a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nfrom . import a\nif TYPE_CHECKING:\n"
                              "    from pkg.sub import b\n")
    graph = build_graph(pkg)
    assert graph.modules == {"pkg", "pkg.sub", "pkg.a", "pkg.sub.b", "pkg.c"}
    assert graph.module_level["pkg.a"] == {"pkg.sub.b"} and graph.in_function["pkg.sub.b"] == {"pkg.a"}
    assert graph.module_level["pkg.c"] == {"pkg.a"}  # the TYPE_CHECKING import never runs: no edge
    assert find_cycles(graph.edges(include_functions=False)) == []
    assert find_cycles(graph.edges()) == [["pkg.a", "pkg.sub.b", "pkg.a"]]
