"""What the tools share: a MOL model from a name or checkpoint, the built-in test (or validation) items, and the
image at which the model's ``H`` acts.

``H`` acts on the reconstruction *before* the output is scaled back to the k-space's units (the model normalises
the k-space by ``c``, ``info.extra["kspace_scale"]``; ``src/molrecon/normalization.py``), so a Jacobian of
``model.prior`` belongs at ``x · c``, not at the returned ``x``. The certificate's own estimate is taken there.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import torch

from molrecon.data.builtin import builtin_dataset, ensure_builtin
from molrecon.data.slice_dataset import collate, physics_from_batch
from molrecon.errors import MolreconError
from molrecon.normalization import where_the_network_acted
from molrecon.weights.loading import resolve_model


def load_mol_or_none(spec: str) -> torch.nn.Module | None:
    """The model (eval mode) of a shipped name, method name or checkpoint; ``None`` after one error line when it
    cannot be loaded or is not a MOL model (it has no prior ``H``)."""
    try:
        model = resolve_model(spec).model
    except MolreconError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if not hasattr(model, "prior"):
        print(f"error: {spec}: not a MOL model (no prior H)", file=sys.stderr)
        return None
    return model


def builtin_slices(kind: str = "2d", first: int | None = None,
                   split: str = "test") -> Iterator[tuple[int, dict[str, Any], Any]]:
    """``(index, batch, physics)`` of the built-in items of ``split`` (the test slices by default) with their
    stored masks, as ``make demo``."""
    ensure_builtin(kind)
    dataset = builtin_dataset(kind, split, mask_func=None)
    n = len(dataset) if first is None else min(first, len(dataset))
    for i in range(n):
        batch = collate([dataset[i]])
        yield i, batch, physics_from_batch(batch)


def where_h_acts(model: torch.nn.Module, batch: dict[str, Any], physics: Any) -> torch.Tensor:
    """Reconstruct with ``model.solve`` and return the image at which ``H`` acts (the normalised one)."""
    with torch.no_grad():
        x, info = model.solve(batch["kspace"], physics)
    return where_the_network_acted(x, info)
