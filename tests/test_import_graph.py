"""The package's import graph (read from source by tests/import_graph.py): no cycles among modules, counting
imports inside functions too; the ground floor imports nothing above it; generators and render name the shared
types without importing priors."""

from pathlib import Path

from tests.import_graph import build_graph, find_cycles

GRAPH = build_graph()
# Modules every layer may import: they import no project module but asdcli.errors (and stdlib, torch).
GROUND_FLOOR = ("asdcli.errors", "asdcli.atomic", "asdcli.suggest", "asdcli.conditioning", "asdcli.bundled")


def _show(cycles: list[list[str]]) -> str:
    return "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def test_no_import_cycles_among_modules():
    cycles = find_cycles(GRAPH.edges(include_functions=True))
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
