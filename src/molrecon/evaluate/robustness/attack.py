"""Worst-case and random k-space perturbations, and the MOL certificates they are checked against."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import InputError
from ...physics import LinearPhysics, complex_gaussian
from ...tensor_utils import batch_norms
from .adapters import _bshape, _error_bound, _expand, _psnr, is_fixed_point_model, measured_data, method_of, reconstruct


# ----------------------------------------------------------------------------------------- perturbations
def project_ball(delta: torch.Tensor, mask: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """:math:`P(\\delta) = M\\delta\\,\\min(1, r/\\|M\\delta\\|)` per batch element (``radius`` ``[B]``)."""
    d = mask.to(delta.real.dtype) * delta
    n = batch_norms(d)
    scale = torch.clamp(radius.to(n.dtype) / n.clamp_min(1e-30), max=1.0)
    return d * _bshape(scale, d).to(d.dtype)


def random_perturbation(shape: Sequence[int], mask: torch.Tensor, radius: torch.Tensor,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Circular complex Gaussian on the sampled locations, rescaled to exactly ``‖δ‖ = radius`` per element."""

    d = mask.to(torch.float32) * complex_gaussian(tuple(shape), 1.0, generator=generator)
    n = batch_norms(d).clamp_min(1e-30)
    return (d * _bshape(radius.to(n.dtype) / n, d)).to(torch.complex64)


@dataclass
class AttackResult:
    """Outcome of :func:`worst_case_perturbation` (one entry per radius)."""

    delta: torch.Tensor                      # [E, C, *sp] best perturbation per radius
    objective: torch.Tensor                  # [E] ‖x(b+δ) − x_ref‖ at the attack's tolerance
    history: list[list[float]]               # per radius: best ‖Δx‖ after each evaluation
    evaluations: int                         # forward (and backward) passes per radius and restart
    seconds: float
    warnings: list[str] = field(default_factory=list)


def _objective(model: Any, y: torch.Tensor, physics: LinearPhysics, delta: torch.Tensor, x_ref: torch.Tensor,
               need_grad: bool, tol: float | None) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """``(‖x(y+δ) − x_ref‖ per element, ∂‖·‖²/∂δ or None, warnings)``."""
    overrides = {"tol": tol} if is_fixed_point_model(model) and tol is not None else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if need_grad:
            d = delta.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                # the exact gradient, whatever backward mode the model trained with
                grad_mode = {"backward": "implicit"} if is_fixed_point_model(model) else {}
                x = model(y + d, physics, **overrides, **grad_mode)
                f2 = (x - x_ref).abs().pow(2).reshape(x.shape[0], -1).sum(dim=1)
                (g,) = torch.autograd.grad(f2.sum(), d)
            value = f2.detach().clamp_min(0).sqrt()
        else:
            with torch.no_grad():
                x = model.solve(y + delta, physics, **overrides)[0] if is_fixed_point_model(model) \
                    else model(y + delta, physics)
            value, g = batch_norms(x - x_ref), None
    if not torch.isfinite(value).all():
        raise InputError(f"{method_of(model)}: the reconstruction of perturbed data is not finite")
    return value.detach(), (None if g is None else g.detach()), [str(w.message) for w in caught]


def worst_case_perturbation(model: Any, y: torch.Tensor, physics: LinearPhysics, eps: Sequence[float],
                            x_ref: torch.Tensor | None = None, steps: int = 6, restarts: int = 1,
                            step_size: float = 1.0, seed: int = 0, tol: float | None = None,
                            max_step: float = 4.0) -> AttackResult:
    r"""Projected normalised gradient ascent for :math:`\max \|x(b+\delta) - x(b)\|` over
    :math:`\{\delta = M\delta,\ \|\delta\| \le \epsilon\|b\|\}`, for every ``eps`` at once (batched).

    ``y`` is one slice ``[1, C, *sp]``; ``x_ref`` = :math:`x(b)` (computed when ``None``). ``steps`` gradient
    evaluations per start plus one final evaluation; ``restarts`` random starts per radius, the best kept;
    ``step_size`` the first step in units of the radius (×1.5 after an improvement, ×0.5 and back to the best
    point after a failure, at most ``max_step``). ``tol`` overrides the model's fixed-point tolerance during the
    attack. See the module docstring for the algorithm.
    """
    t0 = time.perf_counter()
    if y.shape[0] != 1:
        raise InputError(f"worst_case_perturbation takes one slice [1, C, *sp], got batch {y.shape[0]}")
    eps_t = torch.as_tensor(list(eps), dtype=torch.float64)
    E, R = len(eps_t), int(restarts)
    B = E * R
    b_norm = float(batch_norms(measured_data(y, physics)))
    if not b_norm > 0:
        raise InputError("worst_case_perturbation: the measured k-space is zero")
    radius = (eps_t.repeat_interleave(R) * b_norm).to(torch.float32)  # [B]: radius of element e*R + r
    yb = _expand(y, B)
    mask = physics.sampling_weights()
    if x_ref is None:
        x_ref = reconstruct(model, y, physics, tol=tol)[0]
    x_ref = x_ref.detach()
    gen = torch.Generator().manual_seed(int(seed))
    delta = random_perturbation(yb.shape, mask, radius, gen)
    best_f = torch.full((B,), -math.inf)
    best_d = delta.clone()
    best_g = torch.zeros_like(delta)
    eta = torch.full((B,), float(step_size))
    history: list[list[float]] = [[] for _ in range(B)]
    notes: list[str] = []
    for k in range(steps + 1):
        need_grad = k < steps
        f, g, w = _objective(model, yb, physics, delta, x_ref, need_grad, tol)
        notes.extend(w)
        improved = f > best_f
        best_f = torch.where(improved, f, best_f)
        best_d[improved] = delta[improved]
        if g is not None:
            best_g[improved] = g[improved]
        eta = torch.where(improved, torch.clamp(eta * 1.5, max=max_step), eta * 0.5)
        for i in range(B):
            history[i].append(float(best_f[i]))
        if not need_grad:
            break
        gn = batch_norms(best_g).clamp_min(1e-30)
        step = best_g / _bshape(gn, best_g) * _bshape(eta * radius, best_g)
        delta = project_ball(best_d + step.to(best_d.dtype), mask, radius)
    # best restart per radius
    fr = best_f.reshape(E, R)
    pick = fr.argmax(dim=1)
    idx = torch.arange(E) * R + pick
    return AttackResult(delta=best_d[idx], objective=best_f[idx], history=[history[int(i)] for i in idx],
                        evaluations=steps + 1, seconds=time.perf_counter() - t0,
                        warnings=sorted(set(notes)))


def measure_perturbations(model: Any, y: torch.Tensor, physics: LinearPhysics, deltas: torch.Tensor,
                          x_ref: torch.Tensor, info_ref: Any, target: torch.Tensor, max_value: float,
                          tol: float | None = None, max_iter: int | None = None) -> list[dict[str, Any]]:
    """Re-solve :math:`x(b+\\delta)` for each ``deltas[i]`` (tight ``tol``) and measure it against ``x_ref``.

    Returns per perturbation: ``delta_norm``, ``dx_norm``, ``amplification``, its bracket for the exact fixed
    points (``amplification_low``/``_high``, from the a-posteriori error bounds; ``None`` when the model gives
    none), ``psnr_ref``, ``psnr_perturbed``, ``psnr_drop``, and whether the solves converged.
    """
    n = deltas.shape[0]
    x, info = reconstruct(model, _expand(y, n) + deltas, physics, tol=tol, max_iter=max_iter)
    dn = batch_norms(deltas).double().cpu()
    dx = batch_norms(x - x_ref).double().cpu()
    e = _error_bound(info, n) + _error_bound(info_ref, 1)[0]
    p_ref = _psnr(x_ref[0], target[0], max_value)
    out = []
    for i in range(n):
        p = _psnr(x[i], target[0], max_value)
        amp = float(dx[i] / dn[i])
        low = max(float(dx[i] - e[i]), 0.0) / float(dn[i]) if math.isfinite(float(e[i])) else None
        high = float(dx[i] + e[i]) / float(dn[i]) if math.isfinite(float(e[i])) else None
        conv = None if info is None else bool(info.converged[i])
        out.append({"delta_norm": float(dn[i]), "dx_norm": float(dx[i]), "amplification": amp,
                    "amplification_low": low, "amplification_high": high, "psnr_ref": p_ref,
                    "psnr_perturbed": p, "psnr_drop": p_ref - p, "converged": conv,
                    "iterations": None if info is None else int(info.iterations[i])})
    return out


# ------------------------------------------------------------------------------------------- certificates
def certificate_of(model: Any, physics: LinearPhysics, x: torch.Tensor | None = None) -> dict[str, Any] | None:
    """``model.certificate(physics, x)`` made JSON-safe (``None`` for models without one, e.g. MoDL)."""
    fn = getattr(model, "certificate", None)
    if not callable(fn):
        return None
    try:
        cert = fn(physics, x=x) if x is not None else fn(physics)
    except TypeError:  # a certificate() without the x argument
        cert = fn(physics)
    out: dict[str, Any] = {}
    for k, v in dict(cert).items():
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def certificate_verdict(amp: float, low: float | None, high: float | None, constant: float | None) -> str:
    """``"confirmed"`` (upper end of the bracket ≤ C), ``"violated"`` (lower end > C), ``"holds-measured"``
    (measured ≤ C but the bracket straddles C), ``"exceeded-within-error"`` or ``"n/a"``."""
    if constant is None or not math.isfinite(constant):
        return "n/a"
    if high is not None and high <= constant:
        return "confirmed"
    if low is not None and low > constant:
        return "violated"
    if low is None:  # no error bound: only the measured value
        return "holds-measured" if amp <= constant else "violated"
    return "holds-measured" if amp <= constant else "exceeded-within-error"
