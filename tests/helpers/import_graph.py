"""The package's import graph read from source (AST, nothing imported), for the architecture tests.

`build_graph()` maps each module under asdcli/ (dotted name) to the project modules it imports, split by where
the import statement sits: at module level (runs when the module is imported) or inside a function/method
(runs on call). `find_cycles(edges)` returns the import cycles of such a graph, each as a closed path
[a, b, ..., a]. `lazy_imports()` lists every import statement inside a function with whether it says why it is
lazy. Reused by tests/architecture/test_import_graph.py and the other layering tests.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "asdcli"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE


@dataclass
class ImportGraph:
    """modules: every dotted module name; module_level/in_function: module → project modules it imports."""

    modules: set[str]
    module_level: dict[str, set[str]] = field(default_factory=dict)
    in_function: dict[str, set[str]] = field(default_factory=dict)

    def edges(self, include_functions: bool = True) -> dict[str, set[str]]:
        """module → imported modules, module-level imports plus (optionally) those inside functions."""
        out = {m: set(self.module_level.get(m, ())) for m in self.modules}
        if include_functions:
            for m, targets in self.in_function.items():
                out[m] |= targets
        return out


def module_name(path: Path, root: Path = ROOT) -> str:
    """asdcli/priors/base.py → asdcli.priors.base; a package's __init__.py → the package's name."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against the importer)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: set[str]) -> set[str]:
    """Project modules an import statement loads: `from pkg import sub` counts sub when sub is a module,
    else pkg; `import a.b.c` counts the deepest project module in the dotted name."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = _resolve(importer, is_package, node)
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != importer:
            found.add(name)
    return found


def _in_function(tree: ast.AST) -> set[int]:
    """ids of the import nodes that sit inside a function or method body (at any depth)."""
    inside: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return inside


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of imports under `if TYPE_CHECKING:` (never executed, so no runtime edge)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                skip |= {id(n) for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return skip


@dataclass(frozen=True)
class LazyImport:
    """One import statement inside a function: where it is, what it names, and whether it says why it is lazy
    (a comment on its line or just above its block of imports, or a try/except ImportError: optional)."""

    module: str
    line: int
    names: str
    project: bool
    says_why: bool


def _optional_imports(tree: ast.AST) -> set[int]:
    """ids of imports in the body of a `try` that catches ImportError (an optional dependency says so itself)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(h.type is not None and "ImportError" in ast.unparse(h.type)
                                             for h in node.handlers):
            for stmt in node.body:
                found |= {id(n) for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return found


def _has_comment(lines: list[str], node: ast.stmt, import_lines: set[int]) -> bool:
    """A comment on the statement's own lines, or on the first line above its run of imports (blank lines and
    other imports skipped), e.g. `# lazy: transformers is heavy` over `from transformers import ...`."""
    if any("#" in lines[i - 1] for i in range(node.lineno, (node.end_lineno or node.lineno) + 1)):
        return True
    i = node.lineno - 1
    while i >= 1 and (i in import_lines or not lines[i - 1].strip()):
        i -= 1
    return i >= 1 and lines[i - 1].strip().startswith("#")


def lazy_imports(root: Path = ROOT) -> list[LazyImport]:
    """Every import statement inside a function or method under `root` (TYPE_CHECKING blocks excluded)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    package = root.name
    found = []
    for name, path in files.items():
        text = path.read_text(encoding="utf-8")
        tree, lines = ast.parse(text, filename=str(path)), text.splitlines()
        inside, skip, optional = _in_function(tree), _type_checking_only(tree), _optional_imports(tree)
        imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        import_lines = {i for n in imports for i in range(n.lineno, (n.end_lineno or n.lineno) + 1)}
        for node in imports:
            if id(node) not in inside or id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                targets = [_resolve(name, path.name == "__init__.py", node)]
            project = all(t == package or t.startswith(package + ".") for t in targets)
            found.append(LazyImport(name, node.lineno, ", ".join(targets), project,
                                    id(node) in optional or _has_comment(lines, node, import_lines)))
    return found


def build_graph(root: Path = ROOT) -> ImportGraph:
    """Parse every .py under `root` and collect its imports of other project modules."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = ImportGraph(modules=set(files))
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        inside, skip = _in_function(tree), _type_checking_only(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in skip:
                continue
            table = graph.in_function if id(node) in inside else graph.module_level
            table.setdefault(name, set()).update(_targets(node, name, is_package, graph.modules))
    return graph


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of size > 1 (or with a self-loop), each sorted; iterative so depth is no issue."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1 or node in edges.get(node, ()):
                    components.append(sorted(comp))
    return components


def _path(edges: dict[str, set[str]], start: str, members: set[str]) -> list[str]:
    """A shortest closed path start → … → start inside one component (breadth-first)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(edges.get(node, ())):
                if child == start:
                    chain = [node]
                    while chain[-1] != start:
                        chain.append(parents[chain[-1]])
                    return [*reversed(chain), start]
                if child in members and child not in parents:
                    parents[child] = node
                    nxt.append(child)
        frontier = nxt
    return [start]


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One closed path [a, …, a] per strongly connected component of the graph (no cycles → [])."""
    return [_path(edges, comp[0], set(comp)) for comp in _strongly_connected(edges)]


def components(edges: dict[str, set[str]]) -> list[list[str]]:
    """The modules tied into each cycle knot (strongly connected components), sorted."""
    return _strongly_connected(edges)
