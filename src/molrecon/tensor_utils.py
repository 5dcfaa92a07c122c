"""Small batched tensor reductions shared by the solvers, the models and the robustness studies.

Every function reduces a ``[B, ...]`` tensor (complex or real) to one value per batch element (``[B]``), so
that each sample of a batch can be checked, stopped or certified on its own.
"""

from __future__ import annotations

import torch


def batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real part of ``<a, b> = Σ conj(a)·b`` per batch element (``[B]``)."""
    return (a.conj() * b).real.reshape(a.shape[0], -1).sum(dim=1)


def batch_norms(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm per batch element of a complex or real ``[B, ...]`` tensor (``[B]``)."""
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)
