"""molrecon: memory-efficient, provably stable MRI reconstruction with Monotone Operator Learning (MOL)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_pretrained"]


def load_pretrained(name: str, **kwargs):
    """Load a shipped pretrained model by name (e.g. ``"mol-lr-2d-4x"``); see ``molrecon models``."""
    from .models.pretrained import load_pretrained as _load

    return _load(name, **kwargs)
