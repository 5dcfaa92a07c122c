"""The vocabulary (methods, constraints, dims, kinds) is spelled in ``molrecon.names`` only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from molrecon import names
from molrecon.models import build_method, build_model

SRC = Path(__file__).resolve().parents[1] / "src" / "molrecon"
#: Complete lists: a literal holding all of one of them outside ``names.py`` defines the vocabulary again.
VOCABULARIES = {
    "methods": set(names.METHOD_ORDER),
    "classical methods": set(names.CLASSICAL_METHODS),
    "learned methods": set(names.LEARNED_METHODS),
    "fixed-point methods": set(names.FIXED_POINT_METHODS),
    "constraints": set(names.CONSTRAINTS),
    "dims": set(names.DIMS),
    "kinds": set(names.DIMS_OF_KIND),
}
WORDS = set().union(*VOCABULARIES.values(), names.DIMS_TAG.values(), names.KIND_ALIASES)


def _strings(nodes) -> list[str]:
    return [e.value for e in nodes if isinstance(e, ast.Constant) and isinstance(e.value, str)]


def _listings(tree: ast.AST):
    """String constants grouped as one literal collection: a tuple, list or set, or a dict that maps names to
    other names (a table of settings keyed by dims is data about the names, not a second list of them)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            yield node, _strings(node.elts)
        elif isinstance(node, ast.Dict) and node.values and len(_strings(node.values)) == len(node.values) \
                and set(_strings(node.values)) <= WORDS:
            yield node, _strings(node.keys)
            yield node, _strings(node.values)


def test_no_module_lists_the_vocabulary_again():
    """A selection (``--methods`` defaults, a dims check) is fine; the whole list spelled again is not."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "names.py":
            continue
        for node, strings in _listings(ast.parse(path.read_text())):
            for vocab, words in VOCABULARIES.items():
                if words <= set(strings):
                    found.append(f"{path.relative_to(SRC)}:{node.lineno}: all {vocab}")
    assert not found, "\n".join(found)


def test_the_scan_sees_a_second_definition():
    tree = ast.parse('M = ("modl", "deq", "mol-sn", "mol-lr")\nD = {"2d": "2d", "3d": "3d", "2d+t": "2dt"}')
    hits = [v for _, strings in _listings(tree) for v, words in VOCABULARIES.items() if words <= set(strings)]
    assert "learned methods" in hits and "dims" in hits


def test_registry_is_consistent():
    assert set(names.CLASSICAL_METHODS) | set(names.LEARNED_METHODS) == set(names.METHODS)
    assert set(names.FIXED_POINT_METHODS) <= set(names.LEARNED_METHODS)
    assert {names.CONSTRAINT_METHOD[c] for c in names.CONSTRAINTS} == set(names.FIXED_POINT_METHODS)
    assert all(names.KIND_ALIASES[k] in names.DIMS_OF_KIND for k in names.KIND_ALIASES)
    colours = [s.color for s in names.METHODS.values()]
    assert len(set(colours)) == len(colours), "two methods share a plot colour"


@pytest.mark.parametrize("method", names.LEARNED_METHODS)
def test_every_learned_method_builds_with_its_iteration_count(method):
    model = build_method(method, 3, dims="2d", channels=4, layers=2)
    assert model.method_name == method
    key = names.METHODS[method].iterations_key
    assert model.config()[key] == 3
    rebuilt = build_model({"method": method, **model.config()})
    assert type(rebuilt) is type(model) and rebuilt.config() == model.config()
