r"""Backward modes of a fixed-point layer, separate from the forward solver (as in torchdeq).

A fixed-point layer solves :math:`x^\star = T(x^\star, \theta)` without recording anything; a *backward mode*
then decides which differentiable computation, started from the detached :math:`x^\star`, carries the gradient
into :math:`\theta`. Every mode is called as ``mode(step, x_star, **options)`` where ``step`` is one
differentiable application of :math:`T` (the parameters attached) and returns the layer's output.

``implicit`` (default)
    One recorded step ``out = T(x_in)`` from the leaf ``x_in = x^\star`` and a hook that replaces the incoming
    gradient :math:`v` by the solution of :math:`g = v + J_T^T g` (:func:`~.implicit.attach_implicit_backward`):
    the exact gradient of the fixed point. Options: ``solver``, ``max_iter``, ``tol``, ``m``, ``fallback_tol``,
    ``on_info``.
``jfb``
    Jacobian-free backprop (Fung et al. 2022): one recorded step from the detached :math:`x^\star`, so
    :math:`g = v` and :math:`d\ell/d\theta \approx (\partial T/\partial\theta)^T v`. No adjoint solve; a
    descent direction when :math:`T` is a contraction with :math:`\|J_T\|` small enough.
``phantom``
    Phantom gradient (Geng et al. 2021): ``steps`` = :math:`k` recorded damped steps
    :math:`x_{j+1} = (1-\delta) x_j + \delta\,T(x_j)` from :math:`x_0 = x^\star` (``damping`` = :math:`\delta`).
    Its gradient is :math:`\delta (\partial T/\partial\theta)^T \sum_{i<k} B^i v` with
    :math:`B = (1-\delta) I + \delta J_T^T`, which tends to the implicit gradient as :math:`k\to\infty` when
    :math:`T` contracts; :math:`k = 1, \delta = 1` is ``jfb``. Memory grows with :math:`k` (k steps' graphs).
    The output is the last damped iterate, which differs from :math:`T(x^\star)` only by the forward
    solve's convergence error.

Register a new mode with :func:`register_backward`; :func:`attach_backward` dispatches by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import InputError
from .implicit import attach_implicit_backward

Step = Callable[[torch.Tensor], torch.Tensor]
BackwardMode = Callable[..., torch.Tensor]

#: name -> mode; each mode is ``mode(step, x_star, **options) -> output``
BACKWARD_MODES: dict[str, BackwardMode] = {}
#: name -> the options the mode accepts (others given to :func:`attach_backward` are an error)
BACKWARD_OPTIONS: dict[str, tuple[str, ...]] = {}


def register_backward(name: str, options: tuple[str, ...] = ()) -> Callable[[BackwardMode], BackwardMode]:
    """Decorator: make ``fn(step, x_star, **options)`` the backward mode ``name``."""

    def deco(fn: BackwardMode) -> BackwardMode:
        BACKWARD_MODES[name] = fn
        BACKWARD_OPTIONS[name] = tuple(options)
        return fn

    return deco


@register_backward("implicit", ("solver", "max_iter", "tol", "m", "fallback_tol", "on_info", "inner_cg_iter"))
def implicit_backward(step: Step, x_star: torch.Tensor, **options: Any) -> torch.Tensor:
    """Exact implicit gradient (adjoint fixed-point solve in a hook on one recorded step)."""
    x_in = x_star.detach().requires_grad_(True)
    return attach_implicit_backward(step(x_in), x_in, **options)


@register_backward("jfb")
def jfb_backward(step: Step, x_star: torch.Tensor) -> torch.Tensor:
    """Jacobian-free gradient: one recorded step from the detached fixed point (``g = v``)."""
    return step(x_star.detach())


@register_backward("phantom", ("steps", "damping"))
def phantom_backward(step: Step, x_star: torch.Tensor, steps: int = 5, damping: float = 0.5) -> torch.Tensor:
    """Phantom gradient: ``steps`` recorded damped steps ``x ← (1-δ)x + δT(x)`` from the fixed point."""
    check_backward_options("phantom", {"steps": steps, "damping": damping})
    x = x_star.detach()
    for _ in range(int(steps)):
        tx = step(x)
        x = tx if damping == 1.0 else (1.0 - damping) * x + damping * tx
    return x


def check_backward_options(name: str, options: dict[str, Any], where: str = "backward") -> None:
    """Raise :class:`InputError` for an unknown mode, an option it does not take, or a value out of range."""
    if name not in BACKWARD_MODES:
        raise InputError(f"{where}: unknown backward mode {name!r} (known: {', '.join(sorted(BACKWARD_MODES))})")
    unknown = sorted(set(options) - set(BACKWARD_OPTIONS[name]))
    if unknown:
        raise InputError(f"{where}: backward mode {name!r} takes no option(s) {', '.join(unknown)}")
    steps = options.get("steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise InputError(f"{where}: phantom steps must be a positive integer, got {steps!r}")
    damping = options.get("damping")
    if damping is not None and (isinstance(damping, bool) or not isinstance(damping, (int, float))
                                or not 0 < damping <= 1):
        raise InputError(f"{where}: phantom damping must be a number in (0, 1], got {damping!r}")


def attach_backward(name: str, step: Step, x_star: torch.Tensor, **options: Any) -> torch.Tensor:
    """Apply the backward mode ``name`` to the fixed point ``x_star`` of ``step`` (see the module docstring)."""
    check_backward_options(name, options)
    return BACKWARD_MODES[name](step, x_star, **options)


__all__ = ["BACKWARD_MODES", "BACKWARD_OPTIONS", "register_backward", "attach_backward", "check_backward_options",
           "implicit_backward", "jfb_backward", "phantom_backward"]
