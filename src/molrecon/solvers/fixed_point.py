r"""Batched fixed-point solvers: plain (Picard) iteration and Anderson acceleration, per-sample stopping.

Both find :math:`x^\star = T(x^\star)` for each batch element. The residual of an iterate is the relative change

.. math:: r_k = \|T(x_k) - x_k\| / \|T(x_k)\|,

and an element stops once :math:`r_k <` ``tol`` (after at least ``min_iter`` iterations); it is then frozen and
``T`` is no longer evaluated on it (``T`` is called with the indices of the still-active elements, so a converged
slice costs nothing while its neighbours go on).

Plain iteration: :math:`x_{k+1} = T(x_k)`; for a contraction with factor :math:`c` it converges linearly with rate
:math:`c`.

Anderson acceleration (type II, Walker & Ni 2011; the form of the DEQ tutorial of Kolter, Duvenaud & Johnson and
of torchdeq): keep the last ``m`` iterates :math:`X` and images :math:`T(X)`, solve

.. math:: \min_{\gamma}\ \|\textstyle\sum_i \gamma_i (T(x_i) - x_i)\|^2 \quad\text{s.t.}\ \sum_i \gamma_i = 1

(with a small ridge term relative to the Gram matrix's scale), and set
:math:`x_{k+1} = \beta \sum_i \gamma_i T(x_i) + (1-\beta) \sum_i \gamma_i x_i`. Fixed points are the same as
for the plain iteration; for contractions it typically needs several times fewer evaluations of ``T``.

Each element's returned value is :math:`T(x_k)` at its best (lowest-residual) iterate: for a contraction
:math:`T(x_k)` is closer to :math:`x^\star` than :math:`x_k` by the factor :math:`c`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import InputError
from ..tensor_utils import batch_norms, finite_per_sample, flat_real_view
from .info import SolverInfo

FixedPointFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fixed_point_solve(f: FixedPointFn, x0: torch.Tensor, solver: str = "anderson", max_iter: int = 50,
                      tol: float = 1e-4, min_iter: int = 1, m: int = 5, reg: float = 1e-4,
                      beta: float = 1.0) -> tuple[torch.Tensor, SolverInfo]:
    """Solve ``x = f(x, idx)`` for every batch element; return ``(x, info)``.

    Parameters
    ----------
    f: the map ``T``; called as ``f(x_sub, idx)`` with ``x_sub = x[idx]`` for the active batch indices ``idx``
       (a LongTensor) and must return ``T(x)[idx]`` without changing ``x_sub`` in place. Wrap a plain ``T(x)``
       with :func:`indexed`. It may also return a pair ``(T(x)[idx], aux)``, ``aux`` a ``[len(idx), ...]``
       by-product of the evaluation (e.g. a network's output inside ``T``): the solver then keeps, per element,
       the input ``x_k`` of its best iterate and the ``aux`` computed there.
    x0: start ``[B, ...]`` (complex or real).
    solver: ``"anderson"`` or ``"plain"``. max_iter: evaluations of ``T`` per element.
    tol: relative-change tolerance. min_iter: do at least this many iterations.
    m: Anderson memory. reg: ridge weight relative to the largest diagonal entry of the Gram matrix.
    beta: Anderson mixing (1 = undamped).

    Returns ``x`` (each element's ``T(x_k)`` at its best iterate) and a :class:`SolverInfo` with per-element
    ``iterations`` (evaluations of ``T``), ``converged``, the residual history and
    ``extra["solver"]``, ``extra["last_step"]`` (``‖T(x_k) − x_k‖`` of the returned element, absolute), and
    with an ``aux``-returning ``f`` also ``extra["best_input"]`` (``x_k``) and ``extra["best_aux"]``; both are
    zero for an element that never produced a finite ``T(x)``.
    """
    if solver not in ("anderson", "plain"):
        raise InputError(f"fixed_point_solve: solver must be 'anderson' or 'plain', got {solver!r}")
    if max_iter < 1:
        raise InputError(f"fixed_point_solve: max_iter must be >= 1, got {max_iter}")
    B = x0.shape[0]
    dev = x0.device
    x = x0.detach().clone()
    best = x.clone()  # T(x_k) at the best iterate
    real = x0.real.dtype if x0.is_complex() else x0.dtype
    best_res = torch.full((B,), float("inf"), device=dev, dtype=real)
    best_step = torch.full((B,), float("inf"), device=dev, dtype=real)
    last_res = torch.full((B,), float("inf"), device=dev, dtype=real)
    iterations = torch.zeros(B, dtype=torch.long, device=dev)
    active = torch.ones(B, dtype=torch.bool, device=dev)
    residuals: list[torch.Tensor] = []
    best_aux = best_input = None
    shape = x0.shape[1:]
    cplx = x0.is_complex()

    def unflat(v: torch.Tensor) -> torch.Tensor:
        if cplx:
            return torch.view_as_complex(v.reshape(v.shape[0], *shape, 2))
        return v.reshape(v.shape[0], *shape)

    if solver == "anderson":
        n = flat_real_view(x0[:1]).shape[1]
        # per slot: T(x_i) and the residual g_i = T(x_i) − x_i, and the Gram matrix of the residuals, updated by
        # one row per iteration instead of recomputed from the whole history
        Fh = x0.new_zeros((B, m, n), dtype=x0.real.dtype)
        Gh = torch.zeros_like(Fh)
        GG = x0.new_zeros((B, m, m), dtype=x0.real.dtype)
        count = torch.zeros(B, dtype=torch.long, device=dev)  # history length per element

    for _k in range(max_iter):
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            break
        everyone = idx.numel() == B
        # f must not change its input in place: with every element active it receives the iterate itself
        xs = x if everyone else x[idx]
        fx = f(xs, idx)
        fx, aux = fx if isinstance(fx, tuple) else (fx, None)
        if fx.shape != xs.shape:
            raise InputError(f"fixed_point_solve: T returned shape {tuple(fx.shape)} for input {tuple(xs.shape)}")
        bad = ~finite_per_sample(fx)
        if bool(bad.any()):
            # diverged elements stop here; they keep their best value and are reported unconverged
            fx = torch.where(bad.reshape(-1, *([1] * (fx.ndim - 1))), xs, fx)
        step = batch_norms(fx - xs)
        res = torch.where(bad, torch.full_like(step, float("inf")), step / batch_norms(fx).clamp_min(1e-30))
        iterations[idx] += 1
        last_res[idx] = res
        improved = res < best_res[idx]
        sel = idx[improved]
        best[sel] = fx[improved]
        if aux is not None:
            if best_aux is None:
                best_aux, best_input = aux.new_zeros((B, *aux.shape[1:])), torch.zeros_like(x)
            best_aux[sel] = aux[improved]
            best_input[sel] = xs[improved]
        best_res[sel] = res[improved]
        best_step[sel] = step[improved]
        done = ((res < tol) & (iterations[idx] >= min_iter)) | bad
        active[idx[done]] = False
        residuals.append(last_res.clone())
        go = ~done
        if not bool(go.any()):
            continue
        all_go = bool(go.all())
        gi = idx if all_go else idx[go]
        whole = all_go and everyone  # the continuing elements are the whole batch: no gathered copies
        if solver == "plain":
            x = _take_step(x, fx, gi, go, whole)
            continue
        # Anderson update on the elements that continue
        xf, ff = flat_real_view(xs if all_go else xs[go]), flat_real_view(fx if all_go else fx[go])
        slot = count[gi] % m
        g = ff - xf
        Fh[gi, slot] = ff
        Gh[gi, slot] = g
        G_hist = Gh if whole else Gh[gi]
        row = (G_hist @ g[:, :, None])[:, :, 0]  # ⟨g_i, g_new⟩ for every slot i
        GG[gi, slot] = row
        GG[gi, :, slot] = row
        count[gi] += 1
        new = _anderson_mix(Fh if whole else Fh[gi], G_hist, GG if whole else GG[gi],
                            count[gi].clamp(max=m), reg, beta)
        if new is None:
            x = _take_step(x, fx, gi, go, whole)
            continue
        ok = finite_per_sample(new)
        x[gi] = unflat(torch.where(ok[:, None], new, ff)).to(x.dtype)

    converged = best_res < tol
    info = SolverInfo(iterations=iterations, converged=converged, residuals=residuals,
                      extra={"solver": solver, "best_residual": best_res, "last_step": best_step})
    if best_aux is not None:
        info.extra.update(best_input=best_input, best_aux=best_aux)
    return best, info


def _take_step(x: torch.Tensor, fx: torch.Tensor, gi: torch.Tensor, go: torch.Tensor,
               whole: bool) -> torch.Tensor:
    """The plain step ``x ← T(x)`` on the continuing elements. For the whole batch the iterate becomes ``T(x)``
    itself (``T`` may return its input, e.g. a DC solve already at its tolerance, so no in-place copy)."""
    if whole:
        return fx.to(x.dtype)
    x[gi] = fx[go].to(x.dtype)
    return x


def _anderson_mix(Fh: torch.Tensor, Gh: torch.Tensor, GG: torch.Tensor, filled: torch.Tensor, reg: float,
                  beta: float) -> torch.Tensor | None:
    """The next iterate from the histories ``Fh`` (``T(x_i)``) and ``Gh`` (residuals ``T(x_i) − x_i``),
    ``[b, m, n]``, and their Gram matrix ``GG`` ``[b, m, m]``, of which the first ``filled`` slots of each
    element hold entries; ``None`` when there are fewer than two entries or the system is singular.

    A function of its own so that its temporaries are freed before ``T`` is evaluated again.
    """
    nmax = int(filled.max())
    if nmax < 2:
        return None
    dev = Fh.device
    GG = GG[:, :nmax, :nmax]
    # elements with fewer than nmax entries: mask the unused slots out of the least-squares problem
    valid = torch.arange(nmax, device=dev)[None, :] < filled[:, None]
    scale = GG.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(1e-30)
    b = GG.shape[0]
    Hm = torch.zeros((b, nmax + 1, nmax + 1), dtype=GG.dtype, device=dev)
    Hm[:, 0, 1:] = valid.to(GG.dtype)
    Hm[:, 1:, 0] = valid.to(GG.dtype)
    vm = (valid[:, :, None] & valid[:, None, :]).to(GG.dtype)
    eye = torch.eye(nmax, dtype=GG.dtype, device=dev)
    Hm[:, 1:, 1:] = GG * vm + reg * scale[:, None, None] * eye + (1 - valid.to(GG.dtype))[:, :, None] * eye
    rhs = torch.zeros((b, nmax + 1, 1), dtype=GG.dtype, device=dev)
    rhs[:, 0] = 1
    try:
        gamma = torch.linalg.solve(Hm, rhs)[:, 1:, 0] * valid.to(GG.dtype)
    except RuntimeError:  # singular system: the caller takes a plain step this iteration
        return None
    mixed = (gamma[:, None] @ Fh[:, :nmax])[:, 0]
    if beta != 1.0:  # β Σγ T(x_i) + (1 − β) Σγ x_i, with x_i = T(x_i) − g_i
        mixed = mixed - (1 - beta) * (gamma[:, None] @ Gh[:, :nmax])[:, 0]
    return mixed


def indexed(T: Callable[[torch.Tensor], torch.Tensor], x_full: torch.Tensor) -> FixedPointFn:
    """Adapt a full-batch map ``T(x)`` to the ``f(x_sub, idx)`` interface (evaluates the whole batch)."""
    state = {"x": x_full.detach().clone()}

    def f(xs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        state["x"][idx] = xs
        return T(state["x"])[idx]

    return f


__all__ = ["fixed_point_solve", "indexed"]
