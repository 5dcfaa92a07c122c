"""molrecon: memory-efficient, provably stable MRI reconstruction with Monotone Operator Learning (MOL)."""

from __future__ import annotations

from ._version import __version__
from .weights.pretrained import load_pretrained

__all__ = ["__version__", "load_pretrained"]
