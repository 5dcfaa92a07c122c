r"""Robustness and guarantees, measured: worst-case and random k-space perturbations, convergence far past the
training iteration count, uniqueness of the fixed point, distribution shift, and certificates beside reality.

Notation: ``y`` is the (masked) multi-coil k-space of one slice, ``M`` the 0/1 sampling mask, :math:`b = My` the
measured data and :math:`x(b)` a model's reconstruction. All norms are Euclidean over one slice: k-space norms
over ``[C, *spatial]`` (complex), image norms over ``[*spatial]`` (complex) — the norms of the MOL theorem.

Worst-case perturbation (the paper's adversarial experiment)
------------------------------------------------------------
For each radius :math:`\epsilon`,

.. math:: \max_{\delta}\ \|x(b+\delta) - x(b)\|_2^2 \quad\text{s.t.}\quad \delta = M\delta,\quad
          \|\delta\|_2 \le r = \epsilon\,\|b\|_2,

solved by projected, normalised gradient ascent (:func:`worst_case_perturbation`):

.. math:: \delta_{k+1} = P\big(\delta^\star + \eta_k\, r\, g^\star/\|g^\star\|\big),\qquad
          P(\delta) = M\delta\cdot\min\big(1, r/\|M\delta\|\big),

where :math:`\delta^\star` is the best iterate so far and :math:`g^\star` the gradient there (PyTorch's gradient
of a real loss in a complex variable is the steepest-ascent direction). The step :math:`\eta_k` (in units of the
radius) grows by 1.5 after an improvement and halves after a failure (then the next step restarts from
:math:`\delta^\star`): a backtracking ascent that never accepts a worse point. With a large step the update is a
power iteration on :math:`J^H J` (:math:`J = \partial x/\partial b`), so for small :math:`\epsilon` it finds the
top singular direction of the linearised reconstruction. The start is a random Gaussian point of the sphere
(``restarts`` of them; the best is kept). Gradients go through the reconstruction: implicitly through the fixed
point for MOL/DEQ (``model(y, physics)``), by autograd through the unrolled graph for MoDL.

Reported per method and :math:`\epsilon` (after re-solving both :math:`x(b)` and :math:`x(b+\delta^\star)` with a
tight tolerance): the amplification :math:`\|\Delta x\|/\|\delta\|`, the PSNR drop
:math:`\mathrm{PSNR}(x(b)) - \mathrm{PSNR}(x(b+\delta))` against the target, and for MOL the robustness constant
:math:`C` of ``model.certificate(physics)`` (a guarantee for MOL-SN: :math:`\|x^\star(b_1) - x^\star(b_2)\| \le
C\|b_1 - b_2\|`). The certificate speaks of *exact* fixed points; the computed ones carry the a-posteriori bounds
:math:`e_1, e_2` of ``info.extra["error_bound"]`` (:math:`\|x_{out} - x^\star\| \le e`), so the amplification of
the exact fixed points lies in

.. math:: \Big[\frac{\|\Delta x\| - e_1 - e_2}{\|\delta\|},\ \frac{\|\Delta x\| + e_1 + e_2}{\|\delta\|}\Big],

and the certificate is *violated* only if the lower end exceeds :math:`C`; it is *confirmed* when the upper end
does not.

Random perturbations
--------------------
Circular complex Gaussian :math:`\delta` on the sampled locations, rescaled to exactly :math:`\|\delta\| = r`
(the same norms as the attack); mean and maximum amplification over ``random_draws`` draws.

Convergence
-----------
The MOL block :math:`T` (model's own inexact data-consistency step) iterated plainly,
:math:`x_{n+1} = T(x_n)` from the CG-SENSE start, for ``conv_iters`` iterations, far past the training count:
residual :math:`\|x_{n+1} - x_n\|/\|x_n\|` and PSNR of :math:`x_{n+1}` per iteration; and the model's solver
(Anderson by default) with a tiny tolerance, whose residual is the solver's
:math:`\|T(x_n) - x_n\|/\|T(x_n)\|`. MoDL is iterated past its ``K`` the same way (denoiser, then its CG
data consistency) — an unrolled network has no fixed point to converge to.

Uniqueness
----------
The fixed point solved (tight tolerance) from the starts zero, :math:`A^H b`, Gaussian noise of the norm of
:math:`A^H b`, and CG-SENSE. Spread :math:`= \max_{i,j} \|x_i - x_j\| / \|x_{\text{cg-sense}}\|`. For a
contraction (MOL-SN) it is bounded by the a-posteriori bounds; an unconstrained DEQ may land elsewhere.

Distribution shift
------------------
The models (trained at one acceleration) on the same slices under other acceleration factors (fastMRI random
masks) and with extra complex Gaussian k-space noise at given SNRs; CG-SENSE alongside as a reference.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, MolreconError
from ..metrics import PSNR_WHOLE_IMAGE
from ..physics import default_center_fraction
from ..tensor_utils import batch_norms

PARTS = ("attack", "random", "convergence", "uniqueness", "shift")


# ------------------------------------------------------------------------------------------------- inputs
@dataclass
class Example:
    """One slice: ``y`` ``[1, C, *sp]`` (masked k-space), its ``physics``, ``target`` ``[1, *sp]`` (complex),
    ``max_value`` (PSNR data range: the maximum of the target volume) and a ``name``."""

    y: torch.Tensor
    physics: Any
    target: torch.Tensor
    max_value: float
    name: str


@dataclass
class RobustnessConfig:
    """What to measure and how hard (defaults sized for 4 small 2D models × 2 slices on 2 CPU cores).

    eps: attack/perturbation radii relative to ‖b‖. attack_steps: gradient evaluations per attack.
    attack_restarts: random starts per radius (the best is kept). attack_step_size: first step, in radii.
    random_draws: random perturbations per radius. attack_tol: fixed-point tolerance inside the attack (None:
    the model's own). eval_tol / eval_max_iter: tight solves for the reported numbers. conv_iters / conv_tol:
    the convergence study. conv_slices / uniqueness_slices: how many of the slices those use.
    accelerations: distribution-shift accelerations (besides the data's own). noise_snr_db: extra noise levels.
    center_fraction: fastMRI centre fraction per acceleration (None: 0.08·4/acc, fastMRI's 0.08@4×, 0.04@8×).
    parts: which measurements to run. seed: everything random is seeded from it.
    """

    eps: tuple[float, ...] = (0.01, 0.02, 0.05)
    attack_steps: int = 6
    attack_restarts: int = 1
    attack_step_size: float = 1.0
    random_draws: int = 4
    attack_tol: float | None = None
    eval_tol: float = 1e-6
    eval_max_iter: int = 300
    conv_iters: int = 100
    conv_tol: float = 1e-7
    conv_slices: int = 1
    uniqueness_slices: int = 1
    accelerations: tuple[float, ...] = (2.0, 6.0, 8.0)
    noise_snr_db: tuple[float, ...] = (20.0,)
    center_fraction: float | None = None
    parts: tuple[str, ...] = PARTS
    seed: int = 0

    def validate(self) -> RobustnessConfig:
        if not self.eps or any(not (e > 0) or not math.isfinite(e) for e in self.eps):
            raise InputError(f"eps must be positive numbers, got {list(self.eps)}")
        if self.attack_steps < 1 or self.attack_restarts < 1:
            raise InputError(f"attack_steps and attack_restarts must be >= 1, got {self.attack_steps}, "
                             f"{self.attack_restarts}")
        if self.random_draws < 0 or self.conv_iters < 1 or self.eval_max_iter < 1:
            raise InputError("random_draws must be >= 0, conv_iters and eval_max_iter >= 1")
        if not (self.attack_step_size > 0):
            raise InputError(f"attack_step_size must be > 0, got {self.attack_step_size}")
        if any(a < 1 for a in self.accelerations):
            raise InputError(f"accelerations must be >= 1, got {list(self.accelerations)}")
        bad = [p for p in self.parts if p not in PARTS]
        if bad:
            raise InputError(f"unknown part(s) {bad} (choose from {', '.join(PARTS)})")
        return self


# ------------------------------------------------------------------------------------------------ helpers
def _bshape(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def measured_data(y: torch.Tensor, physics: Any) -> torch.Tensor:
    """:math:`b = M y`: the k-space entries the reconstruction actually sees."""
    return physics.mask.to(y.real.dtype) * y


def is_fixed_point_model(model: Any) -> bool:
    """MOL / DEQ models (``solve`` with an info) as opposed to unrolled ones (MoDL)."""
    return callable(getattr(model, "solve", None))


def method_of(model: Any) -> str:
    return str(getattr(model, "method_name", None) or type(model).__name__.lower())


def _expand(y: torch.Tensor, batch: int) -> torch.Tensor:
    return y.expand(batch, *y.shape[1:]) if y.shape[0] == 1 else y


def reconstruct(model: Any, y: torch.Tensor, physics: Any, x0: torch.Tensor | None = None,
                tol: float | None = None, max_iter: int | None = None,
                solver: str | None = None) -> tuple[torch.Tensor, Any]:
    """Reconstruct without gradients; return ``(x, info)`` (``info`` is ``None`` for unrolled models).

    For fixed-point models ``tol``/``max_iter``/``solver`` override the model's settings for this call only;
    their non-convergence warnings are recorded in ``info.extra["warnings"]`` instead of being printed.
    """
    with torch.no_grad():
        if is_fixed_point_model(model):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                given = {"tol": tol, "max_iter": max_iter, "solver": solver}
                x, info = model.solve(y, physics, x0=x0, **{k: v for k, v in given.items() if v is not None})
            info.extra["warnings"] = [str(w.message) for w in caught]
            return x, info
        if x0 is not None:
            raise InputError(f"{method_of(model)}: an unrolled model has no start image to set")
        return model(y, physics), None


def _error_bound(info: Any, batch: int) -> torch.Tensor:
    """Per-element a-posteriori bound on ‖x − x*‖ (inf when unavailable)."""
    if info is None:
        return torch.full((batch,), math.inf)
    eb = info.extra.get("error_bound")
    if eb is None:
        return torch.full((batch,), math.inf)
    eb = torch.as_tensor(eb, dtype=torch.float64).reshape(-1).cpu()
    return torch.where(torch.isfinite(eb), eb, torch.full_like(eb, math.inf)).expand(batch).clone()


def _psnr(x: torch.Tensor, target: torch.Tensor, max_value: float) -> float:
    from ..metrics import psnr

    return float(psnr(x.detach().cpu(), target.detach().cpu(), data_range=max_value))


def _ssim(x: torch.Tensor, target: torch.Tensor, max_value: float) -> float:
    from ..metrics import ssim

    return float(ssim(x.detach().cpu(), target.detach().cpu(), data_range=max_value))


def _finite_or_none(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


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
    from ..physics import complex_gaussian

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


def _objective(model: Any, y: torch.Tensor, physics: Any, delta: torch.Tensor, x_ref: torch.Tensor,
               need_grad: bool, tol: float | None) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """``(‖x(y+δ) − x_ref‖ per element, ∂‖·‖²/∂δ or None, warnings)``."""
    overrides = {"tol": tol} if is_fixed_point_model(model) and tol is not None else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if need_grad:
            d = delta.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                x = model(y + d, physics, **overrides)
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


def worst_case_perturbation(model: Any, y: torch.Tensor, physics: Any, eps: Sequence[float],
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
    mask = physics.mask
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


def measure_perturbations(model: Any, y: torch.Tensor, physics: Any, deltas: torch.Tensor, x_ref: torch.Tensor,
                          info_ref: Any, target: torch.Tensor, max_value: float, tol: float | None = None,
                          max_iter: int | None = None) -> list[dict[str, Any]]:
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
def certificate_of(model: Any, physics: Any, x: torch.Tensor | None = None) -> dict[str, Any] | None:
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


# ---------------------------------------------------------------------------------------------- convergence
def _mol_block_parts(model: Any, y: torch.Tensor, physics: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The model's own fixed-point map ``T`` (inexact DC step, exactly what its solver iterates), or ``None``."""
    fixed_point_map = getattr(model, "fixed_point_map", None)
    return fixed_point_map(y, physics) if callable(fixed_point_map) else None


def _modl_parts(model: Any, y: torch.Tensor, physics: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if not (hasattr(model, "denoise") and hasattr(model, "data_consistency")):
        return None
    atb = physics.A_adjoint(y)

    def T(x: torch.Tensor) -> torch.Tensor:
        z = model.denoise(x)
        return model.data_consistency(z, atb, physics, x0=z)[0]

    return T


def plain_iteration(model: Any, y: torch.Tensor, physics: Any, target: torch.Tensor, max_value: float,
                    n_iter: int) -> dict[str, Any] | None:
    """Iterate the model's map ``n_iter`` times from its usual start; residual and PSNR per iteration.

    MOL/DEQ: the block with the model's inexact CG step from the CG-SENSE start (what ``solver="plain"``
    does). MoDL: denoiser + CG data consistency from :math:`A^H b`, past its trained ``K``. A non-finite
    iterate stops the run (``diverged_at``).
    """
    with torch.no_grad():
        if is_fixed_point_model(model):
            T = _mol_block_parts(model, y, physics)
            start = model.initial_image(y, physics) if hasattr(model, "initial_image") else physics.A_adjoint(y)
        else:
            T = _modl_parts(model, y, physics)
            start = physics.A_adjoint(y)
        if T is None:
            return None
        x = start
        res: list[float] = []
        psnrs: list[float] = []
        diverged_at = None
        for k in range(n_iter):
            try:
                xn = T(x)
            except MolreconError:
                diverged_at = k + 1
                break
            if not torch.isfinite(xn).all():
                diverged_at = k + 1
                break
            res.append(float(batch_norms(xn - x)[0] / batch_norms(x)[0].clamp_min(1e-30)))
            psnrs.append(_psnr(xn[0], target[0], max_value))
            x = xn
    return {"residual": res, "psnr": psnrs, "diverged_at": diverged_at, "start": "cg-sense"
            if is_fixed_point_model(model) else "adjoint"}


def convergence_study(model: Any, y: torch.Tensor, physics: Any, target: torch.Tensor, max_value: float,
                      n_iter: int = 100, tol: float = 1e-7) -> dict[str, Any]:
    """Plain iteration (:func:`plain_iteration`) and, for fixed-point models, the model's own solver run with
    tolerance ``tol`` for up to ``n_iter`` iterations (its residual history)."""
    out: dict[str, Any] = {"method": method_of(model), "iterations": int(n_iter)}
    t0 = time.perf_counter()
    out["plain"] = plain_iteration(model, y, physics, target, max_value, n_iter)
    trained = getattr(model, "K", None) if not is_fixed_point_model(model) else getattr(model, "max_iter", None)
    out["trained_iterations"] = None if trained is None else int(trained)
    if is_fixed_point_model(model):
        try:
            x, info = reconstruct(model, y, physics, tol=tol, max_iter=n_iter)
            out["solver"] = {
                "name": info.extra.get("solver", getattr(model, "solver", None)),
                "residual": [float(r[0]) for r in info.residuals],
                "iterations": int(info.iterations[0]), "converged": bool(info.converged[0]),
                "error_bound": _finite_or_none(float(_error_bound(info, 1)[0])),
                "psnr": _psnr(x[0], target[0], max_value), "warnings": info.extra.get("warnings", [])}
        except MolreconError as exc:
            out["solver"] = {"error": str(exc)}
    plain = out["plain"]
    if plain and plain["residual"]:
        r, p = plain["residual"], plain["psnr"]
        k_tr = out["trained_iterations"]
        out["summary"] = {
            "final_residual": r[-1], "min_residual": min(r), "final_psnr": p[-1], "best_psnr": max(p),
            "psnr_at_trained": p[min(k_tr, len(p)) - 1] if k_tr else None,
            "residual_at_trained": r[min(k_tr, len(r)) - 1] if k_tr else None,
            # a residual that ends well above its minimum means the iteration drifts or oscillates
            "drift": r[-1] / max(min(r), 1e-30), "diverged_at": plain["diverged_at"]}
    out["seconds"] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------------------------------- uniqueness
def uniqueness_study(model: Any, y: torch.Tensor, physics: Any, target: torch.Tensor, max_value: float,
                     tol: float = 1e-6, max_iter: int = 300, seed: int = 0) -> dict[str, Any]:
    """Solve from the starts zero, :math:`A^H b`, noise and CG-SENSE (one batch); report the spread
    :math:`\\max_{i,j}\\|x_i - x_j\\|/\\|x_{cg}\\|`, the PSNR of each, and the a-posteriori bounds."""
    from ..physics import complex_gaussian
    from ..recon import cg_sense

    if not is_fixed_point_model(model):
        return {"method": method_of(model), "applicable": False,
                "note": "unrolled: a fixed computation from A^H b, no fixed point to reach from other starts"}
    with torch.no_grad():
        adj = physics.A_adjoint(y)
        gen = torch.Generator().manual_seed(int(seed) + 7)
        noise = complex_gaussian(tuple(adj.shape), 1.0, generator=gen).to(adj)
        scale = batch_norms(adj) / batch_norms(noise).clamp_min(1e-30)
        noise = noise * scale.reshape(-1, *[1] * (adj.ndim - 1))
        cg = model.initial_image(y, physics) if hasattr(model, "initial_image") else cg_sense(y, physics)
        starts = {"zero": torch.zeros_like(adj), "adjoint": adj, "noise": noise, "cg-sense": cg}
    names = list(starts)
    x0 = torch.cat([starts[n] for n in names])
    x, info = reconstruct(model, _expand(y, len(names)), physics, x0=x0, tol=tol, max_iter=max_iter)
    ref = float(batch_norms(x[names.index("cg-sense"):][:1])[0])
    spread = 0.0
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            spread = max(spread, float(batch_norms(x[i:i + 1] - x[j:j + 1])[0]) / max(ref, 1e-30))
    eb = _error_bound(info, len(names))
    bound_rel = float(2 * eb.max()) / max(ref, 1e-30) if torch.isfinite(eb).all() else None
    return {"method": method_of(model), "applicable": True, "starts": names, "spread": spread,
            "spread_bound": bound_rel,
            "psnr": {n: _psnr(x[i], target[0], max_value) for i, n in enumerate(names)},
            "iterations": {n: int(info.iterations[i]) for i, n in enumerate(names)},
            "converged": {n: bool(info.converged[i]) for i, n in enumerate(names)},
            "error_bound": {n: _finite_or_none(float(eb[i])) for i, n in enumerate(names)}}


# --------------------------------------------------------------------------------------- distribution shift
def evaluate_setting(model: Any | None, examples: Sequence[Example], noise_snr_db: float | None = None,
                     seed: int = 0) -> dict[str, Any]:
    """Mean PSNR/SSIM (and solver iterations) of ``model`` (``None``: CG-SENSE) over ``examples``, with extra
    complex Gaussian noise at ``noise_snr_db`` on the sampled entries when given."""
    from ..physics import add_noise
    from ..recon import DEFAULT_LAM, cg_sense

    psnrs, ssims, iters, conv = [], [], [], []
    for i, ex in enumerate(examples):
        y = ex.y
        if noise_snr_db is not None:
            y, _ = add_noise(y, ex.physics.mask, snr_db=float(noise_snr_db), seed=int(seed) * 1000 + i)
            y = y.to(ex.y.dtype)
        if model is None:
            with torch.no_grad():
                x = cg_sense(y, ex.physics, lam=DEFAULT_LAM["sense"])
            info = None
        else:
            x, info = reconstruct(model, y, ex.physics)
        psnrs.append(_psnr(x[0], ex.target[0], ex.max_value))
        ssims.append(_ssim(x[0], ex.target[0], ex.max_value))
        if info is not None:
            iters.append(int(info.iterations[0]))
            conv.append(bool(info.converged[0]))
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "psnr_per_slice": psnrs,
            "iterations": float(np.mean(iters)) if iters else None,
            "converged": (sum(conv) / len(conv)) if conv else None}


def remask_examples(kspace_full: Sequence[torch.Tensor], maps: Sequence[torch.Tensor],
                    targets: Sequence[torch.Tensor], acceleration: float, center_fraction: float | None = None,
                    seed: int = 0, names: Sequence[str] | None = None) -> list[Example]:
    """Examples at a new acceleration from fully sampled 2D k-space ``[1, C, H, W]`` and maps (fastMRI random
    masks, seeded per slice) — for in-memory data; the CLI reloads its dataset with a new mask instead."""
    from ..physics import MultiCoilMRI, RandomMask

    cf = center_fraction if center_fraction is not None else default_center_fraction(acceleration)
    out = []
    for i, (k, s, t) in enumerate(zip(kspace_full, maps, targets)):
        mask = RandomMask(cf, acceleration)(tuple(k.shape[-2:]), seed=int(seed) + i)
        ph = MultiCoilMRI(s, mask)
        out.append(Example(y=(ph.mask * k).to(torch.complex64), physics=ph, target=t,
                           max_value=float(t.abs().max()), name=(names[i] if names else f"slice{i}")))
    return out


# ----------------------------------------------------------------------------------------------- the driver
def _log(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _label_models(models: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
    if isinstance(models, Mapping):
        return dict(models)
    out: dict[str, Any] = {}
    for m in models:
        name = method_of(m)
        k, label = 2, name
        while label in out:
            label, k = f"{name}#{k}", k + 1
        out[label] = m
    return out


def run_robustness(models: Mapping[str, Any] | Sequence[Any], examples: Sequence[Example],
                   config: RobustnessConfig | None = None,
                   shift_examples: Mapping[float, Sequence[Example]] | None = None,
                   progress: Callable[[str], None] | None = None,
                   data_acceleration: float | None = None) -> dict[str, Any]:
    """Run every measurement of ``config.parts`` for every model on ``examples``; return the results dict
    (what :func:`write_report` writes). ``models`` maps labels to models (or is a list, labelled by method);
    ``shift_examples`` maps an acceleration to the same slices undersampled at that acceleration;
    ``data_acceleration`` is the acceleration of ``examples`` themselves (for the shift table and plot).
    """
    cfg = (config or RobustnessConfig()).validate()
    if not examples:
        raise InputError("robustness: no slice to measure on")
    labelled = _label_models(models)
    if not labelled:
        raise InputError("robustness: no model given")
    t_start = time.perf_counter()
    res: dict[str, Any] = {"config": asdict(cfg), "examples": [e.name for e in examples],
                           "data_acceleration": data_acceleration, "models": {},
                           "attack": {}, "random": {}, "convergence": {}, "uniqueness": {}, "shift": {},
                           "certificate": {}}
    for label, model in labelled.items():
        model.eval()
        method = method_of(model)
        res["models"][label] = {"method": method, "fixed_point": is_fixed_point_model(model),
                                "num_parameters": int(sum(p.numel() for p in model.parameters())),
                                "source": getattr(model, "robustness_source", None)}
        per_slice_attack: list[list[dict]] = []
        per_slice_random: list[list[dict]] = []
        certs: list[dict | None] = []
        conv: list[dict] = []
        uniq: list[dict] = []
        for si, ex in enumerate(examples):
            y, ph = ex.y, ex.physics
            tag = f"{label} / {ex.name}"
            try:
                _log(progress, f"[{time.perf_counter() - t_start:6.0f}s] {tag}: reference reconstruction")
                x_ref, info_ref = reconstruct(model, y, ph, tol=cfg.eval_tol, max_iter=cfg.eval_max_iter)
                cert = certificate_of(model, ph, x_ref) if is_fixed_point_model(model) else None
                certs.append(cert)
                b_norm = float(batch_norms(measured_data(y, ph)))
                radius = torch.tensor([e * b_norm for e in cfg.eps], dtype=torch.float32)
                if "attack" in cfg.parts:
                    _log(progress, f"[{time.perf_counter() - t_start:6.0f}s] {tag}: attack "
                                   f"({cfg.attack_steps} steps x {len(cfg.eps)} radii)")
                    att = worst_case_perturbation(model, y, ph, cfg.eps, x_ref=x_ref, steps=cfg.attack_steps,
                                                  restarts=cfg.attack_restarts, step_size=cfg.attack_step_size,
                                                  seed=cfg.seed + 101 * si, tol=cfg.attack_tol)
                    meas = measure_perturbations(model, y, ph, att.delta, x_ref, info_ref, ex.target, ex.max_value,
                                                 tol=cfg.eval_tol, max_iter=cfg.eval_max_iter)
                    const = None if cert is None else cert.get("robustness_constant")
                    for e, m, hist in zip(cfg.eps, meas, att.history):
                        m.update({"eps": e, "radius": e * b_norm, "history": hist, "objective_at_attack_tol": hist[-1],
                                  "certificate": const, "certified": None if cert is None else cert.get("certified"),
                                  "verdict": certificate_verdict(m["amplification"], m["amplification_low"],
                                                                 m["amplification_high"], const),
                                  "mask_leak": float(batch_norms(att.delta * (1 - ph.mask.to(torch.float32)))
                                                     .max()),
                                  "attack_seconds": att.seconds / len(cfg.eps)})
                    if att.warnings:
                        meas[0]["attack_warnings"] = att.warnings[:5]
                    per_slice_attack.append(meas)
                    if si == 0:
                        res.setdefault("_images", {})[label] = _example_images(model, y, ph, x_ref, att.delta[-1:],
                                                                               ex, cfg)
                if "random" in cfg.parts and cfg.random_draws > 0:
                    _log(progress, f"[{time.perf_counter() - t_start:6.0f}s] {tag}: {cfg.random_draws} random "
                                   f"perturbations x {len(cfg.eps)} radii")
                    gen = torch.Generator().manual_seed(cfg.seed + 977 * si + 13)
                    rad = radius.repeat_interleave(cfg.random_draws)
                    shape = (len(rad), *y.shape[1:])
                    deltas = random_perturbation(shape, ph.mask, rad, gen)
                    meas = measure_perturbations(model, y, ph, deltas, x_ref, info_ref, ex.target, ex.max_value,
                                                 tol=cfg.eval_tol, max_iter=cfg.eval_max_iter)
                    rows = []
                    for ei, e in enumerate(cfg.eps):
                        chunk = meas[ei * cfg.random_draws:(ei + 1) * cfg.random_draws]
                        amps = [c["amplification"] for c in chunk]
                        rows.append({"eps": e, "amplification_mean": float(np.mean(amps)),
                                     "amplification_max": float(np.max(amps)),
                                     "psnr_drop_mean": float(np.mean([c["psnr_drop"] for c in chunk])),
                                     "draws": len(chunk)})
                    per_slice_random.append(rows)
                if "convergence" in cfg.parts and si < cfg.conv_slices:
                    _log(progress, f"[{time.perf_counter() - t_start:6.0f}s] {tag}: convergence ({cfg.conv_iters} "
                                   f"iterations)")
                    c = convergence_study(model, y, ph, ex.target, ex.max_value, cfg.conv_iters, cfg.conv_tol)
                    c["slice"] = ex.name
                    conv.append(c)
                if "uniqueness" in cfg.parts and si < cfg.uniqueness_slices:
                    _log(progress, f"[{time.perf_counter() - t_start:6.0f}s] {tag}: uniqueness")
                    u = uniqueness_study(model, y, ph, ex.target, ex.max_value, cfg.eval_tol, cfg.eval_max_iter,
                                         cfg.seed + si)
                    u["slice"] = ex.name
                    uniq.append(u)
            except MolreconError as exc:
                # one model failing on one slice (e.g. a diverging DEQ) must not lose the other results
                res.setdefault("errors", {}).setdefault(label, []).append(f"{ex.name}: {exc}")
                _log(progress, f"{tag}: failed: {exc}")
        res["certificate"][label] = certs
        if per_slice_attack:
            res["attack"][label] = _aggregate_attack(cfg.eps, per_slice_attack)
        if per_slice_random:
            res["random"][label] = _aggregate_random(cfg.eps, per_slice_random)
        if conv:
            res["convergence"][label] = conv
        if uniq:
            res["uniqueness"][label] = uniq
        if "shift" in cfg.parts:
            _log(progress, f"[{time.perf_counter() - t_start:6.0f}s] {label}: distribution shift")
            try:
                res["shift"][label] = _shift(model, examples, shift_examples, cfg)
            except MolreconError as exc:
                res.setdefault("errors", {}).setdefault(label, []).append(f"distribution shift: {exc}")
    if "shift" in cfg.parts:
        res["shift"]["sense (reference)"] = _shift(None, examples, shift_examples, cfg)
    res["verdicts"] = verdicts(res)
    res["seconds"] = time.perf_counter() - t_start
    return res


def _shift(model: Any | None, examples: Sequence[Example], shift_examples: Mapping[float, Sequence[Example]] | None,
           cfg: RobustnessConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"acceleration": {}, "noise": {}}
    out["acceleration"]["data"] = evaluate_setting(model, examples)
    for acc, exs in sorted((shift_examples or {}).items()):
        out["acceleration"][f"{float(acc):g}"] = evaluate_setting(model, exs)
    for snr in cfg.noise_snr_db:
        out["noise"][f"{float(snr):g}"] = evaluate_setting(model, examples, noise_snr_db=snr, seed=cfg.seed)
    return out


def _aggregate_attack(eps: Sequence[float], per_slice: list[list[dict]]) -> list[dict[str, Any]]:
    """Per radius: worst (max) and mean over slices of the amplification; per-slice records kept."""
    rows = []
    for ei, e in enumerate(eps):
        recs = [s[ei] for s in per_slice]
        amps = [r["amplification"] for r in recs]
        highs = [r["amplification_high"] for r in recs]
        lows = [r["amplification_low"] for r in recs]
        consts = [r["certificate"] for r in recs if r["certificate"] is not None]
        verdict_order = ["violated", "exceeded-within-error", "holds-measured", "confirmed", "n/a"]
        worst_verdict = min((r["verdict"] for r in recs), key=verdict_order.index)
        rows.append({
            "eps": e, "amplification_max": float(max(amps)), "amplification_mean": float(np.mean(amps)),
            "amplification_high_max": None if any(h is None for h in highs) else float(max(highs)),
            "amplification_low_max": None if any(v is None for v in lows) else float(max(lows)),
            "psnr_drop_max": float(max(r["psnr_drop"] for r in recs)),
            "psnr_drop_mean": float(np.mean([r["psnr_drop"] for r in recs])),
            "certificate_min": float(min(consts)) if consts else None,
            "certified": recs[0]["certified"], "verdict": worst_verdict,
            "mask_leak_max": float(max(r["mask_leak"] for r in recs)),
            "delta_over_radius_max": float(max(r["delta_norm"] / r["radius"] for r in recs)),
            "per_slice": recs})
    return rows


def _aggregate_random(eps: Sequence[float], per_slice: list[list[dict]]) -> list[dict[str, Any]]:
    rows = []
    for ei, e in enumerate(eps):
        recs = [s[ei] for s in per_slice]
        rows.append({"eps": e, "amplification_mean": float(np.mean([r["amplification_mean"] for r in recs])),
                     "amplification_max": float(max(r["amplification_max"] for r in recs)),
                     "psnr_drop_mean": float(np.mean([r["psnr_drop_mean"] for r in recs])),
                     "draws": int(sum(r["draws"] for r in recs))})
    return rows


def _example_images(model: Any, y: torch.Tensor, physics: Any, x_ref: torch.Tensor, delta: torch.Tensor,
                    ex: Example, cfg: RobustnessConfig) -> dict[str, np.ndarray]:
    """Magnitudes of x(b), x(b+δ) (largest ε) and |x(b+δ) − x(b)| of the first slice, for the figure."""
    x_adv, _ = reconstruct(model, y + delta, physics, tol=cfg.eval_tol, max_iter=cfg.eval_max_iter)
    a, b = x_ref[0].abs().cpu().numpy(), x_adv[0].abs().cpu().numpy()
    return {"clean": a, "perturbed": b, "difference": (x_adv[0] - x_ref[0]).abs().cpu().numpy(),
            "target": ex.target[0].abs().cpu().numpy(), "eps": float(cfg.eps[-1])}


def verdicts(res: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's acceptance questions answered from the numbers (never assumed)."""
    out: dict[str, Any] = {}
    attack = res.get("attack", {})
    methods = {label: res["models"][label]["method"] for label in attack}
    sn = [lb for lb, m in methods.items() if m == "mol-sn"]
    if sn:
        rows = [r for lb in sn for r in attack[lb]]
        worst = [r["verdict"] for r in rows]
        out["mol_sn_within_certificate"] = all(v in ("confirmed", "holds-measured") for v in worst)
        out["mol_sn_ratio_max"] = max((r["amplification_max"] / r["certificate_min"]) for r in rows
                                      if r["certificate_min"]) if any(r["certificate_min"] for r in rows) else None
    mol = [lb for lb, m in methods.items() if m in ("mol-sn", "mol-lr")]
    others = [lb for lb, m in methods.items() if m in ("modl", "deq")]
    if mol and others:
        comp = []
        for ei in range(len(next(iter(attack.values())))):
            worst_mol = max(attack[lb][ei]["amplification_max"] for lb in mol)
            best_other = min(attack[lb][ei]["amplification_max"] for lb in others)
            comp.append({"eps": attack[mol[0]][ei]["eps"], "mol_worst": worst_mol, "others_best": best_other,
                         "mol_more_robust": worst_mol < best_other})
        out["mol_more_robust_than_baselines"] = all(c["mol_more_robust"] for c in comp)
        out["robustness_comparison"] = comp
    return out


# ---------------------------------------------------------------------------------------------- reporting
def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        v = float(v)
        if not math.isfinite(v):
            return "inf" if v > 0 else "nan"
        return f"{v:.{nd}g}" if (abs(v) < 1e-2 or abs(v) >= 1e4) and v != 0 else f"{v:.{nd}f}"
    return str(v)


def summary_rows(res: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, ε): worst-case and random amplification, PSNR drop, certificate and verdict."""
    rows = []
    for label, att in res.get("attack", {}).items():
        rnd = {r["eps"]: r for r in res.get("random", {}).get(label, [])}
        for r in att:
            rr = rnd.get(r["eps"], {})
            ratio = (r["amplification_max"] / rr["amplification_mean"]) if rr.get("amplification_mean") else None
            rows.append({"model": label, "method": res["models"][label]["method"], "eps": r["eps"],
                         "worst-case amp.": _f(r["amplification_max"]),
                         "exact-fixed-point bracket": (f"[{_f(r['amplification_low_max'])}, "
                                                       f"{_f(r['amplification_high_max'])}]"
                                                       if r["amplification_high_max"] is not None else "—"),
                         "random amp. (mean / max)": (f"{_f(rr.get('amplification_mean'))} / "
                                                      f"{_f(rr.get('amplification_max'))}" if rr else "—"),
                         "worst / random": _f(ratio, 2),
                         "PSNR drop dB (max)": _f(r["psnr_drop_max"]),
                         "certificate C": (_f(r["certificate_min"]) + (" (certified)" if r["certified"]
                                                                       else " (estimate)")
                                           if r["certificate_min"] is not None else "—"),
                         "verdict": r["verdict"]})
    return rows


def markdown_report(res: Mapping[str, Any], title: str = "molrecon robustness report") -> str:
    """The human-readable report: acceptance answers first, then one table per measurement."""
    from .report import markdown_table

    lines = [f"# {title}", ""]
    mach = res.get("machine", {})
    if mach:
        lines += [f"Command: `{mach.get('command', '')}`  ", f"Machine: {mach.get('processor')} × "
                  f"{mach.get('cpu_count')} CPUs, torch {mach.get('torch')}, {mach.get('torch_threads')} threads"
                  f"{', ' + mach['cuda'] if mach.get('cuda') else ''}; run time {_f(res.get('seconds'), 4)} s", ""]
    lines += [f"Slices: {', '.join(res.get('examples', []))}"
              + (f" (acceleration {res['data_acceleration']:g}×)" if res.get("data_acceleration") else ""), ""]
    lines += [f"PSNR: {res.get('psnr_definition', PSNR_WHOLE_IMAGE)}.", ""]
    v = res.get("verdicts", {})
    lines += ["## Answers", ""]
    if "mol_sn_within_certificate" in v:
        lines.append(f"- MOL-SN measured amplification within its certificate C: "
                     f"**{_f(v['mol_sn_within_certificate'])}** (largest measured/C = {_f(v.get('mol_sn_ratio_max'))})")
    if "mol_more_robust_than_baselines" in v:
        lines.append(f"- MOL (SN/LR) worst case smaller than every baseline (MoDL/DEQ) at every ε: "
                     f"**{_f(v['mol_more_robust_than_baselines'])}**")
        for c in v.get("robustness_comparison", []):
            lines.append(f"  - ε = {c['eps']:g}: worst MOL amplification {_f(c['mol_worst'])} vs best baseline "
                         f"{_f(c['others_best'])}")
    if len(lines) and lines[-1] == "":
        lines.append("- (no MOL-SN or no baseline among the models: nothing to compare)")
    lines.append("")
    rows = summary_rows(res)
    if rows:
        cols = ["model", "eps", "worst-case amp.", "exact-fixed-point bracket", "random amp. (mean / max)",
                "worst / random", "PSNR drop dB (max)", "certificate C", "verdict"]
        lines += ["## Worst-case and random perturbations", "",
                  "Amplification = ‖x(b+δ) − x(b)‖/‖δ‖ (max over slices), both reconstructions re-solved at "
                  f"tol {_f(res['config']['eval_tol'])}; the bracket is the amplification of the *exact* fixed "
                  "points given the solver's a-posteriori error bounds. Verdict compares it with C "
                  "(‖x*(b1) − x*(b2)‖ ≤ C‖b1 − b2‖): confirmed = bracket ≤ C, violated = bracket > C.", "",
                  markdown_table(rows, cols)]
    conv = res.get("convergence", {})
    if conv:
        crow = []
        for label, studies in conv.items():
            s = studies[0]
            sm = s.get("summary", {})
            sol = s.get("solver") or {}
            crow.append({"model": label, "iterations run": s["iterations"],
                         "trained iterations": _f(s.get("trained_iterations")),
                         "residual at trained": _f(sm.get("residual_at_trained")),
                         "final residual": _f(sm.get("final_residual")), "min residual": _f(sm.get("min_residual")),
                         "PSNR at trained": _f(sm.get("psnr_at_trained")), "final PSNR": _f(sm.get("final_psnr")),
                         "diverged at": _f(sm.get("diverged_at")),
                         "solver (iters, converged, final res.)": (
                             f"{sol.get('name')}: {sol.get('iterations')}, {_f(sol.get('converged'))}, "
                             f"{_f(sol['residual'][-1]) if sol.get('residual') else '—'}") if sol else "—"})
        lines += ["## Convergence far past the training iteration count", "",
                  "Plain iteration of the model's own map from its usual start; residual ‖x_{n+1} − x_n‖/‖x_n‖. "
                  "For MoDL the unrolled block is simply applied more times than its K.", "",
                  markdown_table(crow, list(crow[0]))]
    uniq = res.get("uniqueness", {})
    if uniq:
        urow = []
        for label, studies in uniq.items():
            s = studies[0]
            if not s.get("applicable"):
                urow.append({"model": label, "spread": "n/a", "note": s.get("note", "")})
                continue
            urow.append({"model": label, "spread": _f(s["spread"]), "bound (2·max error bound)": _f(s["spread_bound"]),
                         "PSNR per start": ", ".join(f"{k} {_f(p)}" for k, p in s["psnr"].items()),
                         "converged": ", ".join(f"{k} {_f(c)}" for k, c in s["converged"].items())})
        cols = ["model", "spread", "bound (2·max error bound)", "PSNR per start", "converged", "note"]
        lines += ["## Uniqueness: the same answer from different starts", "",
                  "spread = max over pairs of starts (zero, A^H b, noise, CG-SENSE) of ‖x_i − x_j‖/‖x_cg‖.", "",
                  markdown_table(urow, cols)]
    shift = res.get("shift", {})
    if shift:
        keys_acc: list[str] = []
        keys_noise: list[str] = []
        for s in shift.values():
            keys_acc += [k for k in s.get("acceleration", {}) if k not in keys_acc]
            keys_noise += [k for k in s.get("noise", {}) if k not in keys_noise]
        srow = []
        for label, s in shift.items():
            row: dict[str, Any] = {"model": label}
            for k in keys_acc:
                name = (f"{res['data_acceleration']:g}× (data)" if res.get("data_acceleration") else "data") \
                    if k == "data" else f"{k}×"
                e = s["acceleration"].get(k)
                row[name] = f"{_f(e['psnr'])} / {_f(e['ssim'])}" if e else "—"
            for k in keys_noise:
                e = s["noise"].get(k)
                row[f"+noise {k} dB"] = f"{_f(e['psnr'])} / {_f(e['ssim'])}" if e else "—"
            srow.append(row)
        lines += ["## Distribution shift (PSNR dB / SSIM, mean over slices)", "", markdown_table(srow, list(srow[0]))]
    if res.get("errors"):
        lines += ["## Failures", ""] + [f"- {lb}: {e}" for lb, errs in res["errors"].items() for e in errs] + [""]
    lines += ["## Figures", "", "![amplification](amplification_vs_eps.png)", "", "![convergence](convergence.png)",
              "", "![examples](adversarial_examples.png)", "", "![shift](distribution_shift.png)", ""]
    return "\n".join(lines)


def write_report(res: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``robustness.json`` (with machine info and command), ``robustness.md`` and the PNG plots into
    ``out_dir``, each atomically; return the paths."""
    from ..io import machine_info, write_json_atomic, write_text_atomic
    from .robustness_plots import write_plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res.setdefault("psnr_definition", PSNR_WHOLE_IMAGE)
    res.setdefault("machine", machine_info())
    res.setdefault("command", res["machine"].get("command"))
    plots = write_plots(res, out)
    clean = {k: v for k, v in res.items() if not k.startswith("_")}
    clean["figures"] = [p.name for p in plots]
    write_json_atomic(out / "robustness.json", clean)
    write_text_atomic(out / "robustness.md", markdown_report(res))
    return {"json": out / "robustness.json", "markdown": out / "robustness.md",
            **{p.stem: p for p in plots}}


# --------------------------------------------------------------------------------------------- loading
def load_models(specs: Sequence[str], device: str = "cpu") -> dict[str, Any]:
    """Models from pretrained names (``mol-sn-2d-4x``) or checkpoint paths, labelled by the spec's stem."""
    from ..weights.loading import load_learned_model

    out: dict[str, Any] = {}
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        path = Path(spec)
        if path.exists() or spec.endswith((".pt", ".pth", ".ckpt")) or "/" in spec:
            model = load_learned_model(checkpoint=path, map_location=device)
            label, source = path.stem, f"checkpoint:{spec}"
        else:
            model = load_learned_model(pretrained=spec)
            label, source = spec, f"pretrained:{spec}"
        model = model.to(device).eval()
        model.robustness_source = source
        base, k = label, 2
        while label in out:
            label, k = f"{base}#{k}", k + 1
        out[label] = model
    if not out:
        raise InputError("robustness: --models is empty")
    return out


def slice_indices(n_items: int, n: int) -> list[int]:
    """``n`` evenly spread item indices (different contrasts/positions of the built-in test split)."""
    if n_items < 1:
        raise InputError("robustness: the dataset has no slices")
    n = max(1, min(int(n), n_items))
    return sorted({int(round(v)) for v in np.linspace(0, n_items - 1, n)})


def load_examples(data: str | Path | None, slices: int = 2, acceleration: float | None = None,
                  center_fraction: float | None = None, kind: str = "2d") -> list[Example]:
    """``slices`` evenly spread test slices of ``data`` (``None``: the built-in test split) as examples; with
    ``acceleration`` a seeded fastMRI random mask replaces the files' masks."""
    from ..data import collate, physics_from_batch
    from .evaluation import load_dataset

    if acceleration is not None and center_fraction is None:
        center_fraction = default_center_fraction(acceleration)
    ds = load_dataset(data, kind=kind, split="test", acceleration=acceleration, center_fraction=center_fraction)
    out = []
    for i in slice_indices(len(ds), slices):
        item = ds[i]
        batch = collate([item])
        out.append(Example(y=batch["kspace"], physics=physics_from_batch(batch), target=batch["target"],
                           max_value=float(item["max_value"]), name=f"{item['fname']}:{item['slice']}"))
    return out


__all__ = [
    "PARTS", "Example", "RobustnessConfig", "AttackResult", "measured_data", "reconstruct",
    "project_ball", "random_perturbation", "worst_case_perturbation", "measure_perturbations", "certificate_of",
    "certificate_verdict", "plain_iteration", "summary_rows", "markdown_report", "write_report",
    "convergence_study", "uniqueness_study", "evaluate_setting",
    "remask_examples", "default_center_fraction", "run_robustness", "verdicts", "load_models", "load_examples",
    "slice_indices",
]
