"""The package's import structure: no cycle between its parts and every import pointing down the layers.

Every module under ``src/molrecon`` is parsed (not imported), and every ``import`` / ``from ... import``
statement counts, including those inside functions, so an import deferred into a function body cannot hide a
cycle. The layer order is the one documented in ``docs/architecture.md``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "molrecon"

#: Lowest layer first. A part may import parts of its own layer or of a lower one, never of a higher one.
LAYERS: list[set[str]] = [
    {"errors", "_version", "names"},
    {"io", "tensor_utils", "metrics", "distributed", "normalization", "precision"},
    {"physics"},
    {"solvers"},
    {"recon", "data", "formats"},
    {"models"},
    {"weights"},
    {"train"},
    {"evaluate"},
    {"bench"},
    {"commands"},
    {"cli", "__main__", "__init__"},
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _all_modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        name, is_package = _module_name(path)
        out[name] = (path, is_package)
    return out


MODULES = _all_modules()


def _imported_modules(path: Path, name: str, is_package: bool) -> set[str]:
    """The molrecon modules ``path`` imports anywhere in its body (``from a import b`` counts ``a.b`` when
    ``a.b`` is a module, else ``a``)."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "molrecon")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "molrecon":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return found


def _part(module: str) -> str:
    """The part of the package a module belongs to: its subpackage or top-level module (``__init__`` for the
    package itself)."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def _part_graph() -> dict[str, dict[str, list[str]]]:
    """``graph[a][b]`` = the imports (``"module -> module"``) by which part ``a`` uses part ``b``."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name, (path, is_package) in MODULES.items():
        for target in _imported_modules(path, name, is_package):
            a, b = _part(name), _part(target)
            if a != b:
                graph[a][b].append(f"{name} -> {target}")
    return graph


def _cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_imports_inside_functions():
    """The walk must count deferred imports, else the cycle test could pass on a hidden cycle."""
    path, is_package = MODULES["molrecon.io"]
    assert "molrecon.errors" in _imported_modules(path, "molrecon.io", is_package)
    tree = ast.parse("def f():\n    from ..models import factory\n")
    nested = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert nested and nested[0].module == "models"


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b": []}, "b": {}}) == []


def test_no_import_cycle_between_parts():
    graph = _part_graph()
    cycles = _cycles(graph)
    detail = [f"{a} -> {b}: {graph[a][b][0]}" for cyc in cycles for a in cyc for b in cyc if b in graph[a]]
    assert not cycles, f"import cycles between parts of molrecon: {cycles}\n" + "\n".join(detail)


def test_every_internal_import_names_a_module():
    """A deferred import of a moved or misspelt module fails only when its function runs; catch it here."""
    missing = [f"{name} -> {target}" for name, (path, is_package) in MODULES.items()
               for target in _imported_modules(path, name, is_package) if target not in MODULES]
    assert not missing, missing


def test_every_part_has_a_layer():
    parts = {_part(name) for name in MODULES}
    assert parts - set(RANK) == set(), "add the new part to LAYERS here and to docs/architecture.md"


@pytest.mark.parametrize("part", sorted(RANK))
def test_imports_point_down_the_layers(part):
    upward = [imp for target, imps in _part_graph().get(part, {}).items() if RANK[target] > RANK[part]
              for imp in imps]
    assert not upward, f"{part} imports a higher layer: {upward}"


def test_layer_order_is_documented():
    text = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    order = ["physics", "solvers", "models", "weights", "train", "evaluate", "commands"]
    assert [RANK[p] for p in order] == sorted(RANK[p] for p in order)
    assert " → ".join(order) in text
