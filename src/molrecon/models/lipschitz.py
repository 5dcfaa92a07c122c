r"""Lipschitz estimators of MOL's network ``H`` and the log-barrier penalty that MOL-LR trains with.

MOL needs :math:`F = I - H` to be :math:`m`-monotone, which holds when :math:`\operatorname{Lip}(H) \le L < 1`
(then :math:`m = 1 - L`; see ``docs/theory.md``). MOL-SN enforces it by construction
(:class:`~molrecon.models.cnn.ConvDenoiser` with ``spectral_norm=True``). MOL-LR leaves the layers free and adds
a training penalty on an *estimate* of the local Lipschitz constant around the current reconstruction:

* :func:`adversarial_lipschitz` — the authors' estimator: start at :math:`v = u + \epsilon\,\xi` around the
  detached output :math:`u` (:math:`\xi` uniform in :math:`[0,1)` for real and imaginary parts), take
  ``steps`` gradient-ascent steps on :math:`\rho(v) = \|H(u) - H(v)\| / \|u - v\|`, rescaling :math:`v` to the
  norm of :math:`u` after each step as they do, and return :math:`\rho(v)` differentiable w.r.t. the weights
  of ``H`` (not w.r.t. ``u`` or ``v``);
* :func:`jacobian_spectral_norm` — a second estimator: power iteration on :math:`J_H(u)^T J_H(u)` with
  Jacobian–vector products, i.e. the local Lipschitz constant at :math:`u` in the limit of small
  perturbations (the adversarial estimate probes finite ones);
* :func:`jacobian_top_subspace` — the top ``k`` directions at once (subspace iteration and a Rayleigh–Ritz
  step), for a crowded top of the spectrum; :func:`jacobian_norm_along` — :math:`\|J_H(u)\,v\|` along a given
  direction, differentiable in the weights (the Jacobian terms of the penalty);
* :func:`jacobian_symmetric_extremes` — the extreme eigenvalues of the Jacobian's symmetric part (Lanczos):
  what monotonicity of :math:`F` needs, a diagnostic beside :math:`L`;
* :func:`lipschitz_barrier` — :math:`-\log(T - L)` for :math:`L < T - e`, continued linearly with matching value
  at :math:`L = T - e` above (the authors' ``contdifflog``, :math:`T = 0.98`, :math:`e = 10^{-3}`).

All estimators are lower bounds of what they estimate over the whole domain (they evaluate at particular
points), which is why MOL-LR's certificate is marked as an estimate.

The strategies that use them (which constraint, which terms, their warm vectors) are in
:mod:`molrecon.models.constraints`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch.autograd import forward_ad
from torch.utils.checkpoint import checkpoint

from ..solvers.implicit import gradients_of_the_state_only
from ..tensor_utils import batch_norms


class JacobianOperator(Protocol):
    """The Jacobian of ``h`` at one point: ``jvp(v) = J v`` and ``vjp(u) = Jᵀ u`` (real inner product)."""

    def jvp(self, v: torch.Tensor) -> torch.Tensor: ...

    def vjp(self, u: torch.Tensor) -> torch.Tensor: ...


#: ``linearize(x)``: the Jacobian of ``h`` at ``x`` (e.g. :meth:`~molrecon.models.cnn.ConvDenoiser.jacobian_at`)
Linearize = Callable[[torch.Tensor], JacobianOperator]


def lipschitz_barrier(lip: torch.Tensor, threshold: float = 0.98, eps: float = 1e-3) -> torch.Tensor:
    r"""The authors' continuously differentiable log barrier.

    .. math:: b(L) = \begin{cases} -\log(T - L) & L < T - e \\ -\log e + (L - T + e)/e & \text{otherwise}\end{cases}

    Value and slope match at :math:`L = T - e`, so the penalty stays finite (and steep) when the estimate
    overshoots the threshold instead of returning NaN.
    """
    lip = torch.as_tensor(lip)
    inside = lip < (threshold - eps)
    safe = torch.where(inside, threshold - lip, torch.ones_like(lip))
    y1 = -torch.log(safe)
    y2 = -torch.log(torch.as_tensor(eps, dtype=lip.dtype, device=lip.device)) + (lip - threshold + eps) / eps
    return torch.where(inside, y1, y2)


def adversarial_lipschitz(h: Callable[[torch.Tensor], torch.Tensor], u: torch.Tensor, steps: int = 10,
                          noise: float = 0.01, step_size: float = 1.0,
                          generator: torch.Generator | None = None, recompute: bool = False,
                          v0: torch.Tensor | None = None, return_point: bool = False):
    r"""The authors' adversarial local Lipschitz estimate of ``h`` around ``u`` (one value per batch element).

    Returns :math:`\|h(u) - h(v^\star)\| / \|u - v^\star\|` ``[B]`` with gradients flowing into the parameters
    of ``h`` only (``u`` and the adversarial point :math:`v^\star` are constants), ready for a penalty.

    ``recompute``: the two CNN graphs of the returned ratio are not kept for backward but recomputed there
    (activation checkpointing): the same value and gradient, one CNN forward more per evaluation, and the
    penalty no longer holds two CNN graphs until the step's backward. Each evaluation is its own checkpoint, so
    the backward rebuilds one graph at a time, not both at once (the step's exact peak: ``benchmarks/README.md``,
    "Exact peak"). ``v0``: start the ascent from this point
    (e.g. the previous step's :math:`v^\star` of the same slice) instead of the noisy copy of ``u``.
    ``return_point``: also return :math:`v^\star` (detached), to warm-start the next estimate.
    """
    u = u.detach()
    u_norm = batch_norms(u).clamp_min(1e-12).reshape(-1, *([1] * (u.ndim - 1)))
    if v0 is not None:
        v = v0.detach().to(u.dtype)
    else:
        real = u.real.new_empty(u.shape)
        if generator is not None:
            xi = torch.complex(torch.rand(u.shape, generator=generator, dtype=real.dtype).to(u.device),
                               torch.rand(u.shape, generator=generator, dtype=real.dtype).to(u.device))
        else:
            xi = torch.complex(torch.rand_like(real), torch.rand_like(real))
        v = u + noise * xi
    # the ascent wants the gradient w.r.t. v only: a network's custom backward (the orthogonal blocks') skips the
    # kernels' gradients, which autograd cannot prune for it
    with torch.enable_grad(), gradients_of_the_state_only():
        hu = h(u).detach()
        for _ in range(steps):
            v = v.detach().requires_grad_(True)
            ratio = batch_norms(hu - h(v)) / batch_norms(u - v).clamp_min(1e-12)
            (g,) = torch.autograd.grad(ratio.sum(), v)
            v = v.detach() + step_size * g
            # the authors rescale v onto the sphere of radius ||u|| after each ascent step
            v = v / batch_norms(v).clamp_min(1e-12).reshape_as(u_norm) * u_norm
    v = v.detach()
    if recompute:
        diff = checkpoint(h, u, use_reentrant=False) - checkpoint(h, v, use_reentrant=False)
    else:
        diff = h(u) - h(v)
    lip = batch_norms(diff) / batch_norms(u - v).clamp_min(1e-12)
    return (lip, v) if return_point else lip


def _jvp_no_graph(h: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r""":math:`J_h(x)\,v` in forward mode, keeping no graph."""
    # the double-backward trick (d/dw <J^T w, v>) would hold a second graph of h while it runs, which set
    # MOL-LR's peak training memory (benchmarks/README.md, "Memory")
    with torch.no_grad(), forward_ad.dual_level():
        return forward_ad.unpack_dual(h(forward_ad.make_dual(x, v))).tangent


def _jacobian_ops(h: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, linearize: Linearize | None
                  ) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    r"""``(v ↦ J v, u ↦ Jᵀ u)`` at the detached ``x``: from ``linearize(x)`` where given (no graph of ``h``), else
    a forward-mode JVP and a VJP through the graph of ``h(x)``, built once here. Call them under ``no_grad``."""
    if linearize is not None:
        with torch.no_grad():
            jac = linearize(x)
        return jac.jvp, jac.vjp
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        y = h(xr)

    def jvp(t: torch.Tensor) -> torch.Tensor:
        return _jvp_no_graph(h, x, t)

    def vjp(t: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(y, xr, t, retain_graph=True)[0]

    return jvp, vjp


def _start_vectors(shape: tuple[int, ...], like: torch.Tensor, v0: torch.Tensor | None,
                   generator: torch.Generator | None) -> torch.Tensor:
    """``v0`` (detached, in ``like``'s dtype), else Gaussian vectors of ``shape`` (from ``generator`` if given)."""
    if v0 is not None:
        return v0.detach().to(like.dtype)
    if generator is not None:
        return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)
    return torch.randn(shape, dtype=like.dtype, device=like.device)


def _real_rows(block: torch.Tensor) -> torch.Tensor:
    r"""``[B, k, ...]`` as ``[B, k, n]`` real rows (complex entries as real and imaginary parts).

    A CNN acting on real and imaginary channels is only real-linear, so its Jacobian is a real matrix on
    :math:`\mathbb{R}^{2n}` and every inner product below is the real one, not the complex one.
    """
    real = torch.view_as_real(block) if block.is_complex() else block
    return real.reshape(real.shape[0], real.shape[1], -1)


def _from_real_rows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_real_rows`: rows ``[B, k, n]`` back to the shape and dtype of ``like``."""
    if not like.is_complex():
        return rows.reshape(like.shape)
    return torch.view_as_complex(rows.reshape(*like.shape, 2).contiguous())


def _orthonormal_rows(block: torch.Tensor) -> torch.Tensor:
    """``[B, k, ...]`` with each element's k vectors orthonormalised in the real inner product (QR)."""
    q, _ = torch.linalg.qr(_real_rows(block).transpose(1, 2))
    return _from_real_rows(q.transpose(1, 2), block)


def jacobian_top_subspace(h: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, k: int, n_iter: int = 3,
                          v0: torch.Tensor | None = None, generator: torch.Generator | None = None,
                          linearize: Linearize | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The top ``k`` singular values and right singular vectors of :math:`J_h(x)` by subspace iteration.

    ``n_iter`` steps of :math:`V \leftarrow \operatorname{orth}(J^T J V)` on ``k`` vectors per batch element at
    once (the ``k`` copies of ``x`` run as one batch of ``h``), then a Rayleigh–Ritz step: the eigenvectors of
    :math:`(JV)^T (JV)` rotate ``V`` onto the Ritz vectors. Returns ``(sigma [B, k], V [B, k, ...])``, both
    detached, in decreasing order. ``v0`` ``[B, k, ...]``: continue from these vectors.

    Why a block: the top of a CNN Jacobian's spectrum is crowded. One power-iteration vector converges at the rate
    :math:`\sigma_2/\sigma_1`, close to 1, and a barrier on that one direction lets its neighbours rise; ``k``
    vectors converge at :math:`\sigma_{k+1}/\sigma_1` and a barrier can hold all ``k``. ``linearize``: as in
    :func:`jacobian_spectral_norm`.
    """
    x = x.detach()
    b, shape = x.shape[0], x.shape[1:]
    v = _orthonormal_rows(_start_vectors((b, k, *shape), x, v0, generator))
    jvp, vjp = _jacobian_ops(h, x.repeat_interleave(k, dim=0), linearize)
    with torch.no_grad():
        for _ in range(n_iter):
            jtjv = vjp(jvp(v.reshape(b * k, *shape)))
            v = _orthonormal_rows(jtjv.reshape(b, k, *shape))
        jv = _real_rows(jvp(v.reshape(b * k, *shape)).reshape(b, k, *shape))
    evals, evecs = torch.linalg.eigh(jv @ jv.transpose(1, 2))
    evals, evecs = evals.flip(-1), evecs.flip(-1)
    ritz = _from_real_rows(evecs.transpose(1, 2).to(jv.dtype) @ _real_rows(v), v)
    return evals.clamp_min(0).sqrt().detach(), ritz.detach()


def jacobian_spectral_norm(h: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n_iter: int = 20,
                           generator: torch.Generator | None = None, return_vector: bool = False,
                           v0: torch.Tensor | None = None, tol: float | None = None,
                           linearize: Linearize | None = None):
    r"""Spectral norm of the Jacobian :math:`J_h(x)` per batch element by power iteration on :math:`J^T J`.

    Uses one forward-mode JVP (under ``no_grad``: it keeps no graph) and one VJP through the graph of
    :math:`h(x)`, built once, per step; returns ``[B]`` (detached). For piecewise-linear ``h`` (ReLU CNN) this
    is the norm of the local linear map at ``x``, a lower bound on ``Lip(h)``. ``v0``: start from this vector
    (e.g. the one a previous call returned with ``return_vector``) instead of a random one. ``tol``: stop before
    ``n_iter`` once no element's estimate rose by more than ``tol`` (relative) over the last 10 steps.
    ``linearize``: ``linearize(x)`` gives the Jacobian at ``x`` as an operator with ``jvp`` and ``vjp`` (e.g.
    :meth:`~molrecon.models.cnn.ConvDenoiser.jacobian_at`), used instead of autograd: no graph of ``h`` is held.

    The top of a CNN Jacobian's spectrum on a whole image is crowded, so the iteration creeps upwards: on the
    ``mol-lr-2d-4x`` shipped before the Jacobian barrier, at a test reconstruction, it reads 0.86 / 0.91 /
    0.985 / 1.0006 after 3 / 10 / 30 / 60 steps from a random start.
    """
    x = x.detach()
    v = _start_vectors(tuple(x.shape), x, v0, generator)
    v = v / batch_norms(v).reshape(-1, *([1] * (x.ndim - 1)))
    sigma = torch.zeros(x.shape[0], device=x.device)
    history: list[torch.Tensor] = []
    jvp, vjp = _jacobian_ops(h, x, linearize)
    for _ in range(n_iter):
        if tol is not None and len(history) > 10 and bool(
                (history[-1] - history[-11] <= tol * history[-1].abs()).all()):
            break
        with torch.no_grad():  # the vectors carry no graph (the linearised vjp would record one otherwise)
            jv = jvp(v)
            jtjv = vjp(jv)
        sigma = batch_norms(jv).detach()
        history.append(sigma)
        n = batch_norms(jtjv).clamp_min(1e-30).reshape(-1, *([1] * (x.ndim - 1)))
        v = (jtjv / n).detach()
    return (sigma.detach(), v) if return_vector else sigma.detach()


def jacobian_symmetric_extremes(h: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, steps: int = 40,
                                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The largest and smallest eigenvalues of the symmetric part :math:`S = (J + J^T)/2` of :math:`J_h(x)`.

    Monotonicity of :math:`F = I - H` needs less than :math:`\|J_H\| < 1`: only
    :math:`\lambda_{\max}(S) \le 1 - m`, since :math:`\langle J v, v\rangle = \langle S v, v\rangle`. A
    :math:`J` with a large *negative* eigenvalue (a sign-flipping direction) has :math:`\|J\| > 1` while
    :math:`F` stays monotone. ``steps`` Lanczos steps on :math:`S` (one forward-mode JVP and one VJP each, full
    reorthogonalisation, the real inner product as for :func:`jacobian_top_subspace`) from a Gaussian start;
    the extreme Ritz values converge from inside, so both are estimates at ``x``, like the power iteration's.
    Returns ``(lambda_max [B], lambda_min [B])``, detached.
    """
    x = x.detach()
    extremes = [_symmetric_extremes_at(h, x[i:i + 1], steps, generator) for i in range(x.shape[0])]
    tops, bottoms = (torch.stack(e).to(x.real.dtype).detach() for e in zip(*extremes))
    return tops, bottoms


def _symmetric_extremes_at(h: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, steps: int,
                           generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`jacobian_symmetric_extremes` of one image ``x`` ``[1, ...]``: Lanczos on real flat vectors."""
    jvp, vjp = _jacobian_ops(h, x, None)

    def flat(t: torch.Tensor) -> torch.Tensor:
        return _real_rows(t[:, None]).reshape(-1)

    def sym(q: torch.Tensor) -> torch.Tensor:
        v = _from_real_rows(q.reshape(1, 1, -1), x[:, None])[:, 0]
        return 0.5 * (flat(jvp(v)) + flat(vjp(v)))

    return _lanczos_extremes(sym, flat(_start_vectors(tuple(x.shape), x, None, generator)), steps)


def _lanczos_extremes(apply: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                      steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest and smallest Ritz values of the symmetric map ``apply`` on flat real vectors after ``steps``
    Lanczos steps from ``start``, with full reorthogonalisation (the three-term recurrence loses it)."""
    basis = [start / start.norm()]
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    for _ in range(min(steps, start.numel())):
        w = apply(basis[-1])
        alphas.append(torch.dot(w, basis[-1]))
        block = torch.stack(basis)
        w = w - block.T @ (block @ w)
        w = w - block.T @ (block @ w)
        betas.append(w.norm())
        if float(betas[-1]) <= 1e-7 * float(alphas[-1].abs().clamp_min(1.0)):
            break
        basis.append(w / betas[-1])
    n = len(alphas)
    off = torch.stack(betas[:n - 1]) if n > 1 else alphas[0].new_zeros(0)
    tri = torch.diag(torch.stack(alphas)) + torch.diag(off, 1) + torch.diag(off, -1)
    ritz = torch.linalg.eigvalsh(tri.double())
    return ritz[-1], ritz[0]


def jacobian_norm_along(h: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                        v: torch.Tensor, recompute: bool = False, linearize: Linearize | None = None) -> torch.Tensor:
    r""":math:`\|J_h(x)\,v\| / \|v\|` per batch element, differentiable w.r.t. the parameters of ``h``.

    A forward-mode JVP at the detached ``x`` along the detached ``v``; its tangent carries the reverse-mode
    graph of the weights, so a penalty on it pushes down the Jacobian in that direction. With ``v`` the
    power-iteration vector of :func:`jacobian_spectral_norm` this is a differentiable estimate of the local
    Lipschitz constant. ``recompute``: the JVP's graph (the CNN's activations and their tangents) is not kept
    for backward but recomputed there: the same value and gradient, one JVP more. ``linearize``: as in
    :func:`jacobian_spectral_norm`; its ``jvp`` (differentiable w.r.t. the weights) replaces the forward-mode
    JVP, whose graph also keeps the primal activations.
    """
    x, v = x.detach(), v.detach().to(x.dtype)

    def norm_along(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if linearize is not None:
            with torch.enable_grad():
                jv = linearize(a).jvp(b)
        else:
            with torch.enable_grad(), forward_ad.dual_level():
                jv = forward_ad.unpack_dual(h(forward_ad.make_dual(a, b))).tangent
        return batch_norms(jv) / batch_norms(b).clamp_min(1e-30)

    return checkpoint(norm_along, x, v, use_reentrant=False) if recompute else norm_along(x, v)


__all__ = ["lipschitz_barrier", "adversarial_lipschitz", "jacobian_top_subspace", "jacobian_spectral_norm",
           "jacobian_symmetric_extremes", "jacobian_norm_along"]
