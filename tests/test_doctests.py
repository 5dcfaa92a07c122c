"""Every docstring example under ``src/molrecon`` runs and gives the output it shows (none is skipped)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "molrecon"


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "__main__.py" or ">>>" not in path.read_text():
            continue
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _modules_with_examples()


def test_examples_are_found_and_none_is_skipped():
    assert len(MODULES) >= 5
    skipped = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "+SKIP" in p.read_text()]
    assert not skipped, f"skipped doctests in {skipped}"


@pytest.mark.parametrize("name", MODULES)
def test_doctest(name, monkeypatch):
    monkeypatch.chdir(REPO)  # examples name repository files such as configs/tiny_2d.yaml
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name}: no example collected"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (run with -s)"
