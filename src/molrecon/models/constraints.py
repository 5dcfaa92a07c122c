r"""Monotonicity constraints for MOL: Lipschitz estimators of ``H`` and the log-barrier penalty (MOL-LR).

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
* :func:`lipschitz_barrier` — :math:`-\log(T - L)` for :math:`L < T - e`, continued linearly with matching value
  at :math:`L = T - e` above (the authors' ``contdifflog``, :math:`T = 0.98`, :math:`e = 10^{-3}`).

Both estimators are lower bounds of the true Lipschitz constant (they evaluate a ratio at particular points),
which is why MOL-LR's certificate is marked as an estimate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from ..tensor_utils import batch_norms


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
    penalty no longer holds two CNN graphs until the step's backward. ``v0``: start the ascent from this point
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
    with torch.enable_grad():
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
        diff = checkpoint(lambda a, b: h(a) - h(b), u, v, use_reentrant=False)
    else:
        diff = h(u) - h(v)
    lip = batch_norms(diff) / batch_norms(u - v).clamp_min(1e-12)
    return (lip, v) if return_point else lip


def jacobian_spectral_norm(h: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n_iter: int = 20,
                           generator: torch.Generator | None = None, return_vector: bool = False):
    r"""Spectral norm of the Jacobian :math:`J_h(x)` per batch element by power iteration on :math:`J^T J`.

    Uses one forward-mode JVP and one VJP per step (``torch.func``-free: a double-backward trick keeps it
    generic), returns ``[B]`` (detached). For piecewise-linear ``h`` (ReLU CNN) this is the norm of the local
    linear map at ``x``, a lower bound on ``Lip(h)``.
    """
    x = x.detach()
    if generator is not None:
        v = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    else:
        v = torch.randn_like(x)
    v = v / batch_norms(v).reshape(-1, *([1] * (x.ndim - 1)))
    sigma = torch.zeros(x.shape[0], device=x.device)
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        y = h(xr)
        for _ in range(n_iter):
            # J v via the double-vjp trick: d/dw <J^T w, v> = J v
            w = torch.zeros_like(y, requires_grad=True)
            (jtw,) = torch.autograd.grad(y, xr, w, create_graph=True)
            (jv,) = torch.autograd.grad(jtw, w, v, retain_graph=True)
            (jtjv,) = torch.autograd.grad(y, xr, jv, retain_graph=True)
            sigma = batch_norms(jv)
            n = batch_norms(jtjv).clamp_min(1e-30).reshape(-1, *([1] * (x.ndim - 1)))
            v = (jtjv / n).detach()
    return (sigma.detach(), v) if return_vector else sigma.detach()


__all__ = ["lipschitz_barrier", "adversarial_lipschitz", "jacobian_spectral_norm"]
