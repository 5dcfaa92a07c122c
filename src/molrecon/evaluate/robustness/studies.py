"""The studies beside the attack: convergence far past the training iterations, uniqueness of the fixed
point, and distribution shift (other accelerations, added noise)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ...errors import MolreconError
from ...physics import LinearPhysics, MultiCoilMRI, RandomMask, add_noise, complex_gaussian, default_center_fraction
from ...recon import cg_sense
from ...tensor_utils import batch_norms
from .adapters import _error_bound, _expand, _finite_or_none, _psnr, _ssim, is_fixed_point_model, method_of, reconstruct
from .config import Example


# ---------------------------------------------------------------------------------------------- convergence
def _mol_block_parts(model: Any, y: torch.Tensor,
                     physics: LinearPhysics) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The model's own fixed-point map ``T`` (inexact DC step, exactly what its solver iterates), or ``None``."""
    fixed_point_map = getattr(model, "fixed_point_map", None)
    return fixed_point_map(y, physics) if callable(fixed_point_map) else None


def _modl_parts(model: Any, y: torch.Tensor, physics: LinearPhysics) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if not (hasattr(model, "denoise") and hasattr(model, "data_consistency")):
        return None
    atb = physics.A_adjoint(y)

    def T(x: torch.Tensor) -> torch.Tensor:
        z = model.denoise(x)
        return model.data_consistency(z, atb, physics, x0=z)[0]

    return T


def plain_iteration(model: Any, y: torch.Tensor, physics: LinearPhysics, target: torch.Tensor, max_value: float,
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


def convergence_study(model: Any, y: torch.Tensor, physics: LinearPhysics, target: torch.Tensor, max_value: float,
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
def uniqueness_study(model: Any, y: torch.Tensor, physics: LinearPhysics, target: torch.Tensor, max_value: float,
                     tol: float = 1e-6, max_iter: int = 300, seed: int = 0) -> dict[str, Any]:
    """Solve from the starts zero, :math:`A^H b`, noise and CG-SENSE (one batch); report the spread
    :math:`\\max_{i,j}\\|x_i - x_j\\|/\\|x_{cg}\\|`, the PSNR of each, and the a-posteriori bounds."""

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

    psnrs, ssims, iters, conv = [], [], [], []
    for i, ex in enumerate(examples):
        y = ex.y
        if noise_snr_db is not None:
            y, _ = add_noise(y, ex.physics.sampling_weights(), snr_db=float(noise_snr_db), seed=int(seed) * 1000 + i)
            y = y.to(ex.y.dtype)
        if model is None:
            with torch.no_grad():
                x = cg_sense(y, ex.physics)  # the default weight of this operator
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

    cf = center_fraction if center_fraction is not None else default_center_fraction(acceleration)
    out = []
    for i, (k, s, t) in enumerate(zip(kspace_full, maps, targets)):
        mask = RandomMask(cf, acceleration)(tuple(k.shape[-2:]), seed=int(seed) + i)
        ph = MultiCoilMRI(s, mask)
        out.append(Example(y=(ph.sampling_weights() * k).to(torch.complex64), physics=ph, target=t,
                           max_value=float(t.abs().max()), name=(names[i] if names else f"slice{i}")))
    return out
