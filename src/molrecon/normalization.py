r"""K-space scale normalisation: learned reconstructions that do not depend on the units of the k-space.

A learned model sees its data at one scale during training (the built-in loaders scale every volume to
``max|target| = 1``); real k-space comes in arbitrary units (fastMRI: ~1e-6 … 1e-3). Every learned entry point
therefore reconstructs

.. math:: \hat x(y) = \tfrac{1}{c}\, f(c\,y),\qquad c = r / s(y),

where :math:`s` is a robust *statistic* of the data (by default the 99th percentile of the coil-combined
zero-filled magnitude :math:`|A^H y|`, per batch element) and :math:`r` the *reference* value that the statistic
had on the model's training data. Since :math:`s(\gamma y) = \gamma s(y)`, :math:`\hat x(\gamma y) =
\gamma\,\hat x(y)` for every :math:`\gamma > 0`: the output is equivariant in the k-space scale by construction,
and at the training scale :math:`c \approx 1`, so models trained without it keep working.

A model carries its :class:`Normalization` as the attribute ``model.normalization`` (shipped models: the
``"normalization"`` field of their JSON sidecar); a model without one uses :func:`default_normalization` of
its ``dims``, measured on the built-in training split (``tools/measure_normalization.py``). Statistics live in a
registry (:data:`STATISTICS`, :func:`register_statistic`), so another one is a decorated function away.
Conventions: ``docs/conventions.md`` ("Scale").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InputError

#: ``name -> f(y, physics) -> [B]`` real, non-negative, positively homogeneous of degree 1 in ``y``.
STATISTICS: dict[str, Callable[[torch.Tensor, Any], torch.Tensor]] = {}


def register_statistic(name: str) -> Callable:
    """Decorator adding a data statistic to :data:`STATISTICS` under ``name``."""
    def deco(fn: Callable[[torch.Tensor, Any], torch.Tensor]) -> Callable:
        STATISTICS[name] = fn
        return fn
    return deco


def _percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row ``q``-quantile of ``values`` ``[B, N]`` (``kthvalue``: no size limit, unlike ``torch.quantile``)."""
    n = values.shape[1]
    k = min(n, max(1, math.ceil(q * n)))
    return values.kthvalue(k, dim=1).values


def _zero_filled(y: torch.Tensor, physics: Any) -> torch.Tensor:
    # an operator outside the LinearPhysics protocol (a bare A / A_adjoint pair) is taken as Cartesian
    return physics.zero_filled(y) if hasattr(physics, "zero_filled") else physics.A_adjoint(y)


@register_statistic("p99-zero-filled")
def p99_zero_filled(y: torch.Tensor, physics: Any) -> torch.Tensor:
    """99th percentile of the zero-filled magnitude per batch element (``|A^H y|`` for Cartesian data, the
    density-compensated gridding image for non-Cartesian data: ``physics.zero_filled``): robust to a few bright
    pixels and noise spikes."""
    return _percentile(_zero_filled(y, physics).abs().reshape(y.shape[0], -1), 0.99)


@register_statistic("max-zero-filled")
def max_zero_filled(y: torch.Tensor, physics: Any) -> torch.Tensor:
    """Maximum of the zero-filled magnitude (``physics.zero_filled``) per batch element."""
    return _zero_filled(y, physics).abs().reshape(y.shape[0], -1).amax(dim=1)


#: Reference of ``p99-zero-filled`` on the built-in *train* split at the training scale (max|target| = 1 per
#: volume, 4x masks of the training configs): median over the training items, per ``dims``; measured by
#: ``tools/measure_normalization.py``.
DEFAULT_REFERENCE: dict[str, float] = {"2d": 0.93457, "3d": 0.92843, "2d+t": 0.93786}
DEFAULT_STATISTIC = "p99-zero-filled"


@dataclass(frozen=True)
class Normalization:
    """``statistic`` (a name in :data:`STATISTICS`, or ``"none"``: no normalisation) and its ``reference``."""

    statistic: str = DEFAULT_STATISTIC
    reference: float = 1.0

    def __post_init__(self) -> None:
        if self.statistic != "none" and self.statistic not in STATISTICS:
            raise InputError(f"unknown normalisation statistic {self.statistic!r} (known: "
                             f"{', '.join(sorted(STATISTICS))}, none)")
        ref = self.reference
        if isinstance(ref, bool) or not isinstance(ref, (int, float)) or not (math.isfinite(ref) and ref > 0):
            raise InputError(f"normalisation reference must be a positive finite number, got {ref!r}")

    @property
    def enabled(self) -> bool:
        return self.statistic != "none"

    def factors(self, y: torch.Tensor, physics: Any) -> torch.Tensor:
        """``c = reference / s(y)`` per batch element (``[B]``, real); 1 where ``s(y)`` is 0 (no signal)."""
        if not self.enabled:
            return torch.ones(y.shape[0], dtype=y.real.dtype, device=y.device)
        s = STATISTICS[self.statistic](y, physics).to(y.real.dtype)
        ok = torch.isfinite(s) & (s > 0)
        return torch.where(ok, self.reference / torch.where(ok, s, torch.ones_like(s)), torch.ones_like(s))

    def to_dict(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "reference": float(self.reference)}

    @classmethod
    def from_dict(cls, d: Any, where: str = "normalization") -> Normalization:
        """Read ``{"statistic": ..., "reference": ...}`` (a sidecar field); a bad one names ``where``."""
        if not isinstance(d, dict) or "reference" not in d:
            raise InputError(f"{where}: 'normalization' must be a mapping with 'statistic' and 'reference', "
                             f"got {d!r}")
        try:
            return cls(statistic=d.get("statistic", DEFAULT_STATISTIC), reference=d["reference"])
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None


def default_normalization(dims: str | None) -> Normalization:
    """The built-in training scale of ``dims`` (``"2d"``, ``"3d"``, ``"2d+t"``)."""
    if dims not in DEFAULT_REFERENCE:
        raise InputError(f"no default normalisation for dims={dims!r} (known: {', '.join(DEFAULT_REFERENCE)})")
    return Normalization(DEFAULT_STATISTIC, DEFAULT_REFERENCE[dims])


def model_normalization(model: Any, physics: Any) -> Normalization:
    """``model.normalization`` when set, else the default of the model's (or the data's) ``dims``."""
    norm = getattr(model, "normalization", None)
    if norm is None:
        return default_normalization(getattr(model, "dims", None) or getattr(physics, "dims", None))
    if isinstance(norm, dict):
        return Normalization.from_dict(norm)
    return norm


def _bcast(c: torch.Tensor, ndim: int) -> torch.Tensor:
    return c.reshape(c.shape[0], *([1] * (ndim - 1)))


def _unscale(out: Any, c: torch.Tensor) -> Any:
    if isinstance(out, torch.Tensor):
        return out / _bcast(c, out.ndim).to(out.device)
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        x, *rest = out
        for item in rest:
            extra = getattr(item, "extra", None)
            if isinstance(extra, dict):
                bound = extra.get("error_bound")
                if isinstance(bound, torch.Tensor) and bound.shape == c.shape:
                    extra["error_bound"] = bound / c.detach()
                extra["kspace_scale"] = c.detach()
        return (_unscale(x, c), *rest)
    return out


def where_the_network_acted(x: torch.Tensor, info: Any) -> torch.Tensor:
    """The image ``c · x`` on which the model's network acted, from its reconstruction ``x`` (returned in the
    k-space's units) and the factor ``c`` its solve recorded in ``info.extra["kspace_scale"]`` (``x`` itself
    when there is none): where a Jacobian of ``model.prior`` belongs."""
    extra = getattr(info, "extra", None)
    c = extra.get("kspace_scale") if isinstance(extra, dict) else None
    return x.detach() if c is None else x.detach() * _bcast(c, x.ndim).to(x.device)


def scale_invariant(method: Callable) -> Callable:
    """Decorate a model's ``forward(y, physics, x0=None, ...)`` / ``solve``: normalise, reconstruct, scale back.

    The factor ``c`` (``[B]``) is recorded in ``model.last_info.extra["kspace_scale"]`` (and in the ``info``
    that ``solve`` returns); a start image ``x0`` is scaled with the data. Inputs that are not a
    k-space tensor of the physics are passed through untouched, so the model's own checks report them.
    """
    @functools.wraps(method)
    def wrapper(self, y, physics, *args, **kwargs):
        if not isinstance(y, torch.Tensor) or not hasattr(physics, "A_adjoint") or not hasattr(physics,
                                                                                                  "check_kspace"):
            return method(self, y, physics, *args, **kwargs)
        physics.check_kspace(y, f"{type(self).__name__} input k-space")
        if not bool(torch.isfinite(torch.view_as_real(y.detach()) if y.is_complex() else y.detach()).all()):
            return method(self, y, physics, *args, **kwargs)  # the model's own check names the NaN/Inf
        norm = model_normalization(self, physics)
        if not norm.enabled:
            return method(self, y, physics, *args, **kwargs)
        c = norm.factors(y, physics)
        args = list(args)
        if args and isinstance(args[0], torch.Tensor):
            args[0] = args[0] * _bcast(c, args[0].ndim)
        if isinstance(kwargs.get("x0"), torch.Tensor):
            kwargs["x0"] = kwargs["x0"] * _bcast(c, kwargs["x0"].ndim)
        out = method(self, y * _bcast(c, y.ndim), physics, *args, **kwargs)
        info = getattr(self, "last_info", None)
        if isinstance(getattr(info, "extra", None), dict):
            info.extra["kspace_scale"] = c.detach()
        return _unscale(out, c)
    return wrapper


__all__ = ["STATISTICS", "DEFAULT_REFERENCE", "DEFAULT_STATISTIC", "Normalization", "register_statistic",
           "default_normalization", "model_normalization", "scale_invariant", "p99_zero_filled",
           "max_zero_filled", "where_the_network_acted"]
