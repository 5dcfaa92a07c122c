r"""Implicit differentiation: through a fixed point, and through the CG data-consistency solve.

Fixed point (deep equilibrium, Bai et al. 2019)
-----------------------------------------------
Let :math:`x^\star = T(x^\star, \theta)`. By the implicit function theorem, for a loss :math:`\ell(x^\star)` with
:math:`v = \partial\ell/\partial x^\star`,

.. math:: \frac{d\ell}{d\theta} = \Big(\frac{\partial T}{\partial\theta}\Big)^T g,\qquad
          g = v + J_T(x^\star)^T g,

where :math:`J_T = \partial T/\partial x`. When :math:`T` is a contraction (:math:`\|J_T\| \le c < 1`) the adjoint
equation is itself a contraction and is solved by the same plain/Anderson iteration, using vector–Jacobian
products of *one* step of :math:`T`. :func:`attach_implicit_backward` implements this with a single recorded
step ``out = T(x_in)`` (``x_in`` = the detached fixed point, a leaf that requires grad) and a hook on ``out``
that replaces the incoming gradient :math:`v` by :math:`g`; autograd then backpropagates :math:`g` through the
one step into :math:`\theta`. Memory: one step's graph, whatever the number of forward iterations.

If the adjoint iteration does not converge the hook falls back: the best iterate if its residual is below
``fallback_tol``, otherwise the Jacobian-free gradient :math:`g = v` (Fung et al. 2022) — reported in the info
and by a warning.

Data consistency (CG)
---------------------
:math:`u = M(\mu)^{-1} r` with :math:`M(\mu) = I + \mu A^H A` Hermitian positive definite. Differentiating
:math:`M u = r`: :math:`M\,du = dr - d\mu\,A^H A u`. With PyTorch's convention for complex gradients
(:math:`d\ell = \mathrm{Re}\langle \bar g, dz\rangle`),

.. math:: \bar r = M^{-1}\bar u,\qquad \bar\mu = -\,\mathrm{Re}\langle \bar r, A^H A u\rangle,

so the backward of the CG solve is another CG solve with the same matrix (:class:`DCSolve`); the CG iterations
are never recorded.

Inside an adjoint solve that backward runs once per adjoint iteration, each time warm-started at the solution of
the iteration before. With ``inner_cg_iter`` (:func:`attach_implicit_backward`) each of these runs at most that
many CG steps instead of running to ``tol``: the adjoint iterates the pair :math:`(g, w)`,

.. math:: w' = \mathrm{CG}_k(M, g;\ \text{start } w),\qquad g' = v + J^T w',

whose fixed point is the exact one (at :math:`M w = g` the warm start already solves the system), as the
forward's truncated DC step keeps the forward's fixed points. The pair is the iterated state, Anderson's
included: with ``w`` kept aside as a hidden warm start, the map seen by the solver would change from call to
call, and at 3–5 CG steps the adjoint solve stopped converging. The last backward, the one into the parameters,
runs to ``tol`` again.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from ..tensor_utils import batch_dot
from .cg import conjugate_gradient, shifted_normal
from .fixed_point import fixed_point_solve, indexed
from .info import SolverInfo


class _InnerCG:
    """The DC backward inside one evaluation of the adjoint map: its CG budget, the start ``w`` it is given and the
    ``w'`` it returns (module docstring)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.start: torch.Tensor | None = None
        self.result: torch.Tensor | None = None
        self.calls = 0


#: Set by :func:`attach_implicit_backward` for the duration of an adjoint solve with ``inner_cg_iter`` only.
_INNER_CG: ContextVar[_InnerCG | None] = ContextVar("inner_cg", default=None)

#: True for the duration of an adjoint solve, whose vector-Jacobian products are taken with respect to the state.
_STATE_GRADIENTS_ONLY: ContextVar[bool] = ContextVar("state_gradients_only", default=False)


def state_gradients_only() -> bool:
    """Whether the backward now running wants gradients with respect to the state only (inside an adjoint solve).

    Autograd's own operations skip the parameter gradients that nobody asked for; a custom ``backward`` cannot see
    which were asked for, and may read this instead to skip them (and whatever it would recompute for them). It is
    a context variable of the calling thread: where autograd runs a backward on another thread (CUDA), it reads
    False, and the parameter gradients are computed and discarded as before.
    """
    return _STATE_GRADIENTS_ONLY.get()


@contextmanager
def gradients_of_the_state_only() -> Iterator[None]:
    """Within this block every backward wants gradients with respect to the state only
    (:func:`state_gradients_only` reads True): an adjoint solve, or an ascent on the network's input."""
    token = _STATE_GRADIENTS_ONLY.set(True)
    try:
        yield
    finally:
        _STATE_GRADIENTS_ONLY.reset(token)


class DCSolve(torch.autograd.Function):
    """``u = (I + mu·N)^{-1} rhs`` by CG with an implicit (CG) backward for ``rhs`` and ``mu``."""

    @staticmethod
    def forward(ctx, rhs: torch.Tensor, mu: torch.Tensor, normal: Callable[[torch.Tensor], torch.Tensor],
                x0: torch.Tensor | None, max_iter: int, tol: float) -> torch.Tensor:  # type: ignore[override]
        mu_d = mu.detach()
        with torch.no_grad():
            # a new tensor under no_grad (never the warm start itself, which autograd must not see as the output)
            u, _ = conjugate_gradient(shifted_normal(normal, mu_d), rhs.detach(),
                                      None if x0 is None else x0.detach(), max_iter, tol)
        ctx.save_for_backward(u, mu_d)
        ctx.normal, ctx.max_iter, ctx.tol = normal, max_iter, tol
        return u

    @staticmethod
    def backward(ctx, grad_u: torch.Tensor):  # type: ignore[override]
        u, mu = ctx.saved_tensors
        normal = ctx.normal
        # The implicit fixed-point backward calls this backward once per adjoint iteration with slowly changing
        # ``grad_u``: warm-starting CG at the previous solution cuts the CG work several-fold (same tolerance).
        inner = _INNER_CG.get()
        warm = getattr(ctx, "warm", None) if inner is None else inner.start
        if warm is not None and warm.shape != grad_u.shape:
            warm = None
        max_iter = ctx.max_iter if inner is None else min(inner.budget, ctx.max_iter)
        with torch.no_grad():
            grad_rhs, _ = conjugate_gradient(shifted_normal(normal, mu), grad_u, warm, max_iter, ctx.tol)
        ctx.warm = grad_rhs
        if inner is not None:
            inner.result, inner.calls = grad_rhs, inner.calls + 1
        with torch.no_grad():
            grad_mu = None
            if ctx.needs_input_grad[1]:
                grad_mu = (-batch_dot(grad_rhs, normal(u)).sum()).to(mu.dtype).reshape(mu.shape)
        return grad_rhs, grad_mu, None, None, None, None


def dc_solve(rhs: torch.Tensor, mu: torch.Tensor | float, normal: Callable[[torch.Tensor], torch.Tensor],
             x0: torch.Tensor | None = None, max_iter: int = 100, tol: float = 1e-6) -> torch.Tensor:
    r"""Solve :math:`(I + \mu N) u = r` by CG, differentiable in ``rhs`` and ``mu`` by an implicit CG backward."""
    if not isinstance(mu, torch.Tensor):
        mu = torch.as_tensor(mu, dtype=rhs.real.dtype, device=rhs.device)
    return DCSolve.apply(rhs, mu, normal, x0, max_iter, tol)


def _solve_adjoint_pairs(adjoint_step: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, budget: int,
                         solver: str, max_iter: int, tol: float, m: int) -> tuple[torch.Tensor, SolverInfo]:
    """The adjoint solve on the pairs ``(g, w)`` with ``budget`` CG steps per DC backward (module docstring);
    returns ``g`` and the solve's info."""
    inner = _InnerCG(budget)

    def pair_step(pair: torch.Tensor) -> torch.Tensor:
        inner.start, inner.result, inner.calls = pair[:, 1], None, 0
        g = adjoint_step(pair[:, 0])
        if inner.calls != 1:
            raise RuntimeError(f"implicit backward: inner_cg_iter needs exactly one DC solve in the recorded step, "
                               f"found {inner.calls}")
        return torch.stack([g, inner.result], dim=1)

    token = _INNER_CG.set(inner)
    try:
        start = torch.stack([v, torch.zeros_like(v)], dim=1)
        pairs, info = fixed_point_solve(indexed(pair_step, start), start, solver=solver, max_iter=max_iter, tol=tol,
                                        m=m)
    finally:
        _INNER_CG.reset(token)
    return pairs[:, 0], info


def attach_implicit_backward(out: torch.Tensor, x_in: torch.Tensor, solver: str = "anderson",
                             max_iter: int = 100, tol: float = 1e-6, m: int = 5, fallback_tol: float = 1e-2,
                             on_info: Callable[[SolverInfo], None] | None = None,
                             inner_cg_iter: int | None = None) -> torch.Tensor:
    r"""Make gradients through ``out = T(x_in)`` equal those through the fixed point :math:`x^\star`.

    ``x_in`` must be the detached fixed point with ``requires_grad=True`` and ``out`` one step of ``T`` recorded
    from it. Registers a hook on ``out`` that solves :math:`g = v + J_T^T g` (per-sample stopping, ``solver``,
    ``tol``, ``max_iter``) and returns ``out``. ``on_info`` receives the adjoint solve's :class:`SolverInfo`
    (``extra["fallback"]`` says whether and how it fell back). ``inner_cg_iter`` caps the CG steps of every
    :class:`DCSolve` backward inside the adjoint solve (module docstring; ``None``: each runs to its tolerance).
    """
    if not out.requires_grad:
        return out

    busy = [False]  # the inner VJPs pass through ``out`` too: the hook must not act on them

    def hook(v: torch.Tensor) -> torch.Tensor | None:
        if busy[0]:
            return None
        busy[0] = True
        try:
            return _solve_adjoint(v)
        finally:
            busy[0] = False

    def _solve_adjoint(v: torch.Tensor) -> torch.Tensor:
        v = v.detach()

        def adjoint_step(g: torch.Tensor) -> torch.Tensor:
            (jtg,) = torch.autograd.grad(out, x_in, g, retain_graph=True)
            return v + jtg

        with gradients_of_the_state_only(), torch.enable_grad():
            if inner_cg_iter is None:
                g, info = fixed_point_solve(indexed(adjoint_step, v), v, solver=solver, max_iter=max_iter,
                                            tol=tol, m=m)
            else:
                g, info = _solve_adjoint_pairs(adjoint_step, v, int(inner_cg_iter), solver, max_iter, tol, m)
        fallback = "none"
        bad = ~info.converged
        if bool(bad.any()):
            res = info.extra["best_residual"]
            finite = torch.isfinite(res)
            soft = bad & finite & (res < fallback_tol)
            hard = bad & ~soft
            if bool(hard.any()):
                # Jacobian-free gradient for the elements whose adjoint solve failed
                sel = hard.reshape(-1, *([1] * (v.ndim - 1)))
                g = torch.where(sel, v, g)
                fallback = "jacobian-free"
            else:
                fallback = "best-iterate"
            warnings.warn(f"implicit backward: adjoint fixed point not converged for {int(bad.sum())} sample(s) "
                          f"(relative residual {float(res[bad].max()):.2e} > tol {tol:.1e}); "
                          f"fallback: {fallback}", RuntimeWarning, stacklevel=2)
        info.extra["fallback"] = fallback
        if on_info is not None:
            on_info(info)
        return g

    out.register_hook(hook)
    return out


__all__ = ["DCSolve", "dc_solve", "attach_implicit_backward", "state_gradients_only",
           "gradients_of_the_state_only"]
