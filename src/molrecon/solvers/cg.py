r"""Batched complex conjugate gradient for Hermitian positive-definite systems.

Solves :math:`M x = b` for each batch element, where ``normal_op`` applies :math:`M` (e.g.
:math:`A^H A + \lambda I`). Each element stops on its own: once its relative residual
:math:`\|b - M x\| / \|b\|` is below ``tol`` its step length is set to zero, so it is frozen while the
others go on. With gradients enabled the loop is written without in-place updates, so autograd can
differentiate through it (MoDL's unrolled training); MOL instead differentiates the solve implicitly
(:mod:`molrecon.solvers.implicit`) and runs every CG under ``no_grad``. There the vectors are updated in place
and the step lengths are computed on the host from the two inner products per step, which the stopping test
reads there anyway: the same iterates to the bit (for one batch element) with about half the bookkeeping of
the differentiable loop (~90 instead of ~180 µs per step at 128², one thread; ``benchmarks/README.md``).

``forcing`` (an inexact-Newton forcing term, Eisenstat & Walker, SIAM J. Sci. Comput. 1996) also stops an
element once its residual is ``forcing`` times the one it started with: a warm-started solve inside an outer
iteration then does only the work its start leaves, and an element whose start already solves the system
does none.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..tensor_utils import batch_dot
from .info import SolverInfo


def shifted_normal(normal: Callable[[torch.Tensor], torch.Tensor],
                   mu: torch.Tensor | float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v ↦ v + μ·N v``, the matrix of a data-consistency solve, built in ``N v`` in place: ``normal``
    (``LinearPhysics.normal``) returns a new tensor, and neither product keeps its output for backward."""
    return lambda v: normal(v).mul_(mu).add_(v)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def conjugate_gradient(normal_op: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor,
                       x0: torch.Tensor | None = None, max_iter: int = 50,
                       tol: float = 1e-6, forcing: float | None = None) -> tuple[torch.Tensor, SolverInfo]:
    """Solve ``normal_op(x) = rhs`` by CG; return ``(x, info)``.

    Parameters
    ----------
    normal_op: Hermitian positive-definite operator acting on ``[B, ...]`` tensors.
    rhs: right-hand side ``[B, ...]`` (complex or real).
    x0: warm start (zeros if ``None``).
    max_iter: iteration cap. tol: relative residual at which an element stops.
    forcing: also stop an element at ``forcing`` times its starting residual (``None`` or 0: only ``tol``).

    Neither ``rhs`` nor ``x0`` is modified; under ``no_grad`` the solution is a new tensor, with gradients it
    may be ``x0`` itself when ``x0`` already solves the system.
    """
    if forcing is not None and not 0 <= forcing < 1:
        raise ValueError(f"conjugate_gradient: forcing must be in [0, 1), got {forcing}")
    forcing = forcing or None  # 0 stops at ``tol`` alone: no forcing
    if not torch.is_grad_enabled():
        return _conjugate_gradient_in_place(normal_op, rhs, x0, max_iter, tol, forcing)
    x = torch.zeros_like(rhs) if x0 is None else x0
    r = rhs - normal_op(x) if x0 is not None else rhs
    p = r
    rs = batch_dot(r, r)
    rhs_norm = batch_dot(rhs, rhs).sqrt()
    safe_norm = torch.where(rhs_norm > 0, rhs_norm, torch.ones_like(rhs_norm))
    rel = torch.where(rhs_norm > 0, rs.sqrt() / safe_norm, torch.zeros_like(rs))
    if forcing is not None:
        tol = torch.clamp(forcing * rel, min=tol)
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


def _relative(rs: list[float], norms: list[float]) -> list[float]:
    return [math.sqrt(s) / n if n > 0 else 0.0 for s, n in zip(rs, norms)]


def _scale_rows(t: torch.Tensor, values: list[float]) -> torch.Tensor:
    """``values`` as a real ``[B, 1, …]`` tensor that broadcasts over ``t``'s rows."""
    return torch.tensor(values, dtype=t.real.dtype, device=t.device).reshape((-1,) + (1,) * (t.ndim - 1))


def _conjugate_gradient_in_place(normal_op: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor,
                                 x0: torch.Tensor | None, max_iter: int, tol: float,
                                 forcing: float | None) -> tuple[torch.Tensor, SolverInfo]:
    """:func:`conjugate_gradient` without gradients: the same recurrences and stopping rule, the vectors updated in
    place and the per-element scalars kept on the host (module docstring)."""
    n = rhs.shape[0]
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs.clone() if x0 is None else rhs - normal_op(x)
    p = r.clone()
    rs = batch_dot(r, r).tolist()
    norms = [math.sqrt(v) for v in batch_dot(rhs, rhs).tolist()]
    rel = _relative(rs, norms)
    tols = [tol if forcing is None else max(tol, forcing * v) for v in rel]
    active = [v > t for v, t in zip(rel, tols)]
    iterations = [0] * n
    history = [rel]
    for _ in range(max_iter):
        if not any(active):
            break
        ap = normal_op(p)
        pap = batch_dot(p, ap).tolist()
        ok = [a and q > 0 for a, q in zip(active, pap)]  # q > 0 is False for NaN: that element stops
        alpha = [s / q if o else 0.0 for s, q, o in zip(rs, pap, ok)]
        if n == 1:
            x.add_(p, alpha=alpha[0])
            r.add_(ap, alpha=-alpha[0])
        else:
            step = _scale_rows(x, alpha)
            x.addcmul_(step, p)
            r.addcmul_(step, ap, value=-1)
        rs_new = batch_dot(r, r).tolist()
        beta = [s_new / s if o else 0.0 for s_new, s, o in zip(rs_new, rs, ok)]
        p.mul_(beta[0] if n == 1 else _scale_rows(p, beta)).add_(r)
        rs = [s_new if o else s for s_new, s, o in zip(rs_new, rs, ok)]
        iterations = [i + o for i, o in zip(iterations, ok)]
        rel = _relative(rs, norms)
        history.append(rel)
        active = [o and v > t for o, v, t in zip(ok, rel, tols)]
    device = rhs.device
    return x, SolverInfo(iterations=torch.tensor(iterations, dtype=torch.long, device=device),
                         converged=torch.tensor([v <= t for v, t in zip(rel, tols)], device=device),
                         residuals=[torch.tensor(h, dtype=torch.float32, device=device) for h in history])
