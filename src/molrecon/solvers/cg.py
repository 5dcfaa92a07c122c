r"""Batched complex conjugate gradient for Hermitian positive-definite systems.

Solves :math:`M x = b` for each batch element, where ``normal_op`` applies :math:`M` (e.g.
:math:`A^H A + \lambda I`). Each element stops on its own: once its relative residual
:math:`\|b - M x\| / \|b\|` is below ``tol`` its step length is set to zero, so it is frozen while the
others go on. The loop is written without in-place updates, so autograd can differentiate through it
(MoDL's unrolled training); MOL instead differentiates the solve implicitly (:mod:`molrecon.solvers.implicit`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..tensor_utils import batch_dot
from .info import SolverInfo


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def conjugate_gradient(normal_op: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor,
                       x0: torch.Tensor | None = None, max_iter: int = 50,
                       tol: float = 1e-6) -> tuple[torch.Tensor, SolverInfo]:
    """Solve ``normal_op(x) = rhs`` by CG; return ``(x, info)``.

    Parameters
    ----------
    normal_op: Hermitian positive-definite operator acting on ``[B, ...]`` tensors.
    rhs: right-hand side ``[B, ...]`` (complex or real).
    x0: warm start (zeros if ``None``).
    max_iter: iteration cap. tol: relative residual at which an element stops.
    """
    x = torch.zeros_like(rhs) if x0 is None else x0
    r = rhs - normal_op(x) if x0 is not None else rhs
    p = r
    rs = batch_dot(r, r)
    rhs_norm = batch_dot(rhs, rhs).sqrt()
    safe_norm = torch.where(rhs_norm > 0, rhs_norm, torch.ones_like(rhs_norm))
    rel = torch.where(rhs_norm > 0, rs.sqrt() / safe_norm, torch.zeros_like(rs))
    active = rel > tol
    iterations = torch.zeros(rhs.shape[0], dtype=torch.long, device=rhs.device)
    residuals = [rel.detach()]
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        Ap = normal_op(p)
        pAp = batch_dot(p, Ap)
        ok = active & (pAp > 0)
        alpha = torch.where(ok, rs / torch.where(ok, pAp, torch.ones_like(pAp)), torch.zeros_like(rs))
        x = x + _bcast(alpha, x).to(x.dtype) * p
        r = r - _bcast(alpha, r).to(r.dtype) * Ap
        rs_new = batch_dot(r, r)
        beta = torch.where(ok, rs_new / torch.where(ok, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + _bcast(beta, p).to(p.dtype) * p
        rs = torch.where(ok, rs_new, rs)
        iterations = iterations + ok.long()
        rel = torch.where(rhs_norm > 0, rs.sqrt() / safe_norm, torch.zeros_like(rs))
        residuals.append(rel.detach())
        active = ok & (rel > tol)
    converged = rel <= tol
    return x, SolverInfo(iterations=iterations, converged=converged, residuals=residuals)
