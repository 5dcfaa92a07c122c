"""Model adapters: one way to reconstruct, read the solver report and score any model (MOL/DEQ through
``solve`` with per-call overrides, unrolled MoDL through ``forward``), and loading models by name or path."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ...errors import InputError
from ...metrics import psnr, ssim
from ...weights.loading import resolve_model
from ..methods import is_fixed_point_model, run


# ------------------------------------------------------------------------------------------------ helpers
def _bshape(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def measured_data(y: torch.Tensor, physics: Any) -> torch.Tensor:
    """:math:`b = M y`: the k-space entries the reconstruction actually sees."""
    return physics.sampling_weights().to(y.real.dtype) * y


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
    if is_fixed_point_model(model):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x, info = run(model, y, physics, x0=x0, tol=tol, max_iter=max_iter, solver=solver)
        info.extra["warnings"] = [str(w.message) for w in caught]
        return x, info
    if x0 is not None:
        raise InputError(f"{method_of(model)}: an unrolled model has no start image to set")
    x, _ = run(model, y, physics)
    return x, None


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
    return float(psnr(x.detach().cpu(), target.detach().cpu(), data_range=max_value))


def _ssim(x: torch.Tensor, target: torch.Tensor, max_value: float) -> float:
    return float(ssim(x.detach().cpu(), target.detach().cpu(), data_range=max_value))


def _finite_or_none(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None



# --------------------------------------------------------------------------------------------- loading
def load_models(specs: Sequence[str], device: str = "cpu") -> dict[str, Any]:
    """Models from pretrained names (``mol-sn-2d-4x``) or checkpoint paths, labelled by the spec's stem."""

    out: dict[str, Any] = {}
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        choice = resolve_model(spec, device=device)
        model, label = choice.model, choice.label
        model.robustness_source = choice.source
        base, k = label, 2
        while label in out:
            label, k = f"{base}#{k}", k + 1
        out[label] = model
    if not out:
        raise InputError("robustness: --models is empty")
    return out
