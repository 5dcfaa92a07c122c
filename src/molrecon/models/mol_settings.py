"""The settings and inputs of a :class:`~molrecon.models.mol.MOL` model: the checks its constructor and its solves
run, and the rule by which one call's overrides replace the model's solver settings."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InputError
from ..physics.linear import LinearPhysics
from ..physics.mri import check_finite
from ..solvers.backward import check_backward_options
from .cnn import DIMS
from .priors import check_architecture

#: Solver settings that :meth:`MOL.solve` and :meth:`MOL.forward` accept as per-call overrides.
SOLVE_OVERRIDES = ("tol", "max_iter", "min_iter", "solver", "cg_iter", "cg_forcing", "strict")


def check_mol_arguments(*, constraint: str, solver: str, dims: str | None, alpha: float, lam: float, max_iter: int,
                        cg_iter: int, cg_forcing: float | None, backward_cg_iter: int | None, architecture: str,
                        backward: str, backward_steps: int, backward_damping: float,
                        residual_scale: float) -> None:
    """Raise :class:`InputError` naming the first constructor argument of ``MOL`` that is out of its range."""
    if solver not in ("anderson", "plain"):
        raise InputError(f"MOL: solver must be 'anderson' or 'plain', got {solver!r}")
    if dims is not None and dims not in DIMS:
        raise InputError(f"MOL: dims must be one of {DIMS} or None, got {dims!r}")
    if not (alpha > 0):
        raise InputError(f"MOL: alpha must be > 0, got {alpha}")
    if not (lam > 0) or not math.isfinite(lam):
        raise InputError(f"MOL: lam must be a positive number, got {lam}")
    if max_iter < 1 or cg_iter < 1:
        raise InputError(f"MOL: max_iter and cg_iter must be >= 1, got {max_iter}, {cg_iter}")
    if cg_forcing is not None and not 0 <= float(cg_forcing) < 1:
        raise InputError(f"MOL: cg_forcing must be in [0, 1) or None, got {cg_forcing}")
    if backward_cg_iter is not None and int(backward_cg_iter) < 1:
        raise InputError(f"MOL: backward_cg_iter must be >= 1 or None, got {backward_cg_iter}")
    check_architecture(architecture, constraint)
    check_backward_options(backward, {}, where="MOL")
    check_backward_options("phantom", {"steps": backward_steps, "damping": backward_damping}, where="MOL")
    if not (0 < residual_scale < 1):
        raise InputError(f"MOL: residual_scale must be in (0, 1), got {residual_scale}")


def check_solve_inputs(model: Any, y: torch.Tensor, physics: LinearPhysics, x0: torch.Tensor | None = None) -> None:
    """Raise :class:`InputError` naming what is wrong with one solve's k-space, operator, start image or ``model``'s
    parameters, before any computing."""
    if not isinstance(physics, LinearPhysics):
        raise InputError(f"MOL: physics must be a LinearPhysics operator (e.g. MultiCoilMRI, NonCartesianMRI), "
                         f"got {type(physics).__name__}")
    if not isinstance(y, torch.Tensor):
        raise InputError(f"MOL: k-space must be a torch tensor, got {type(y).__name__}")
    physics.check_kspace(y, "MOL input k-space")
    check_finite(y, "MOL input k-space")
    if y.device != model.log_lam.device:
        raise InputError(f"MOL: k-space is on {y.device} but the model is on {model.log_lam.device}")
    if x0 is not None:
        physics.check_image(x0, "MOL start image x0")
        check_finite(x0, "MOL start image x0")
        if x0.shape[0] != y.shape[0]:
            raise InputError(f"MOL: start image batch {x0.shape[0]} != k-space batch {y.shape[0]}")
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise InputError(f"MOL: parameter {name} contains NaN/Inf")


def resolve_settings(model: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The solver settings of one call: ``model``'s, replaced by the non-``None`` ``overrides`` (a ``cg_forcing``
    of 0 is not ``None``: it turns off the forcing term a model ships with)."""
    unknown = sorted(set(overrides) - set(SOLVE_OVERRIDES))
    if unknown:
        raise InputError(f"MOL: {unknown} are not solver settings ({', '.join(SOLVE_OVERRIDES)})")
    return {k: getattr(model, k) if overrides.get(k) is None else overrides[k] for k in SOLVE_OVERRIDES}
