"""Run any method, classical or learned, one way: :func:`run`, and the runners that evaluation builds on it.

:func:`run` is what ``molrecon recon``, ``molrecon evaluate``, the benchmarks and the robustness study call:

- a classical method is a name of the registry (:data:`molrecon.names.CLASSICAL_METHODS`), run by
  :func:`molrecon.recon.reconstruct` with its tuned ``DEFAULT_LAM`` unless ``lam`` is given;
- a learned method is a model (resolved by :func:`molrecon.weights.loading.resolve_model`): fixed-point models
  (MOL, DEQ) through ``solve`` with the per-call solver overrides, the others (MoDL) through ``forward``.

Either way the result is ``(x, info)`` with ``info`` the solver report (a
:class:`~molrecon.solvers.SolverInfo`) or ``None`` when the method reports none. Adding a method therefore
means registering it once (:func:`molrecon.recon.register_classical` or
:func:`molrecon.models.factory.register_model`); nothing here names a method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import recon
from ..errors import InputError
from ..names import CLASSICAL_METHODS, LEARNED_METHODS, METHOD_ORDER
from ..weights.loading import ModelChoice, resolve_model
from ..weights.pretrained import pretrained_name


def is_fixed_point_model(model: Any) -> bool:
    """MOL / DEQ models (``solve`` returns ``(x, info)``) as opposed to unrolled ones (MoDL)."""
    return callable(getattr(model, "solve", None))


def run(method: str | torch.nn.Module, y: torch.Tensor, physics: Any, x0: torch.Tensor | None = None,
        **overrides: Any) -> tuple[torch.Tensor, Any]:
    """Reconstruct ``y`` with ``method`` (a classical name or a learned model) without gradients.

    ``overrides`` are the method's settings for this call (``None`` values keep the method's own): ``lam``,
    ``max_iter``... of a classical method; the solver settings of a fixed-point model (``tol``, ``max_iter``,
    ``cg_iter``, ``solver``...). ``x0`` starts an iterative solve (CG-SENSE, MOL). Returns ``(x, info)``.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(method, str):
        if method not in CLASSICAL_METHODS:
            raise InputError(f"unknown classical method {method!r} (choose from {', '.join(CLASSICAL_METHODS)})")
        lam = recon.default_lam(method, physics)  # the operator's tuned default (Cartesian or not)
        if lam is not None:
            given.setdefault("lam", lam)
        if x0 is not None:
            given["x0"] = x0
        with torch.no_grad():
            out = recon.reconstruct(method, y, physics, **given)
        return out if isinstance(out, tuple) else (out, None)
    model = method
    with torch.no_grad():
        if is_fixed_point_model(model):
            return model.solve(y, physics, x0=x0, **given)
        name = getattr(model, "method_name", type(model).__name__)
        if given or x0 is not None:
            what = sorted(given) + (["x0"] if x0 is not None else [])
            raise InputError(f"{name}: {', '.join(what)} apply to the fixed-point models; an unrolled model "
                             f"runs a fixed number of steps from its own start")
        # a stale report of an earlier call must not be attributed to this one
        if hasattr(model, "last_info"):
            model.last_info = None
        x = model(y, physics)
    return x, getattr(model, "last_info", None)


@dataclass
class MethodRunner:
    """One method ready to run: ``fn(y, physics) -> (x, solver)`` where ``solver`` is
    ``{"iterations": [B] or None, "converged": [B] or None}``; ``model`` is the learned module, if any."""

    name: str
    method: str
    source: str
    fn: Callable[[Any, Any], tuple[Any, dict[str, Any]]]
    meta: dict[str, Any] = field(default_factory=dict)
    model: Any = None


def classical_runner(method: str, **kwargs: Any) -> MethodRunner:
    """A runner for a classical method with ``kwargs`` for :func:`molrecon.recon.reconstruct` (default ``lam``:
    the one tuned for the data's operator, :func:`molrecon.recon.default_lam`; ``meta["params"]`` reports it)."""
    if method not in CLASSICAL_METHODS:
        raise InputError(f"unknown classical method {method!r} (choose from {', '.join(CLASSICAL_METHODS)})")
    kw = dict(kwargs)
    params = dict(kw)

    def fn(y: Any, physics: Any) -> tuple[Any, dict[str, Any]]:
        lam = kw.get("lam", recon.default_lam(method, physics))
        if lam is not None:
            params["lam"] = lam  # reported: the weight actually used on this data's operator
        x, info = run(method, y, physics, **({**kw, "lam": lam} if lam is not None else kw))
        return x, _solver_report(info)

    return MethodRunner(name=method, method=method, source="classical", fn=fn, meta={"params": params})


def model_runner(model: Any, name: str | None = None, source: str = "model",
                 overrides: dict[str, Any] | None = None) -> MethodRunner:
    """A runner for a learned model (:func:`run` with ``overrides``).

    Iterations come from the solver report (MOL and the DEQ: per sample; MoDL: its CG steps, when it sets
    ``last_info``)."""
    method = getattr(model, "method_name", None) or "model"
    model.eval()
    kw = dict(overrides or {})

    def fn(y: Any, physics: Any) -> tuple[Any, dict[str, Any]]:
        x, info = run(model, y, physics, **kw)
        return x, _solver_report(info)

    meta: dict[str, Any] = {"num_parameters": int(sum(p.numel() for p in model.parameters()))}
    pmeta = getattr(model, "pretrained_meta", None)
    if isinstance(pmeta, dict):
        meta["pretrained"] = {k: pmeta.get(k) for k in ("name", "validation", "training") if k in pmeta}
    return MethodRunner(name=name or method, method=method, source=source, fn=fn, meta=meta, model=model)


def choice_runner(choice: ModelChoice) -> MethodRunner:
    """The runner of a resolved model (:func:`molrecon.weights.loading.resolve_model`)."""
    return model_runner(choice.model, source=choice.source, overrides=choice.overrides)


def _per_sample(info: Any, key: str, cast: type) -> list | None:
    v = info.get(key) if isinstance(info, dict) else getattr(info, key, None)
    if v is None:
        return None
    if hasattr(v, "tolist"):
        v = v.tolist()
    return [cast(e) for e in (v if isinstance(v, (list, tuple)) else [v])]


def _solver_report(info: Any) -> dict[str, Any]:
    """Per-sample iterations and convergence flags of a :class:`~molrecon.solvers.SolverInfo` (or dict)."""
    if info is None:
        return {"iterations": None, "converged": None}
    return {"iterations": _per_sample(info, "iterations", int), "converged": _per_sample(info, "converged", bool)}


def resolve_methods(methods: Sequence[str] = (), checkpoints: Sequence[str | Path] = (),
                    pretrained: Sequence[str] = (), classical_kwargs: dict[str, dict] | None = None,
                    device: str = "cpu", overrides: dict[str, Any] | None = None) -> list[MethodRunner]:
    """Runners for classical ``methods``, training ``checkpoints`` and ``pretrained`` names, in canonical order.

    A learned method name in ``methods`` (``mol-lr``...) resolves to the pretrained model
    ``<method>-2d-4x``; prefer ``pretrained`` to be explicit. Two models of the same method get their
    source (file stem or pretrained name) as label so that both appear in the report. ``overrides`` are
    the learned models' per-call solver settings (:func:`~molrecon.weights.loading.resolve_model`).
    """
    runners: list[MethodRunner] = []
    classical_kwargs = classical_kwargs or {}
    names: list[str] = []
    for m in methods:
        if m in CLASSICAL_METHODS:
            runners.append(classical_runner(m, **classical_kwargs.get(m, {})))
        elif m in LEARNED_METHODS:
            names.append(m)
        else:
            raise InputError(f"unknown method {m!r} (choose from {', '.join(METHOD_ORDER)})")
    for ck in checkpoints:
        runners.append(choice_runner(resolve_model(checkpoint=ck, device=device, overrides=overrides)))
    for name in dict.fromkeys([*pretrained, *(pretrained_name(m) for m in names)]):
        runners.append(choice_runner(resolve_model(pretrained=name, device=device, overrides=overrides)))
    counts: dict[str, int] = {}
    for r in runners:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r in runners:
        if counts[r.name] > 1 and r.source != "classical":
            kind, where = r.source.split(":", 1)
            # a checkpoint is named by its run folder too: every run writes best.pt / last.pt
            path = Path(where)
            r.name = f"{r.method} ({path.parent.name}/{path.stem})" if kind == "checkpoint" else \
                f"{r.method} ({where})"
    if not runners:
        raise InputError("no method to evaluate: give --methods, --checkpoint or --pretrained")
    return sorted(runners, key=lambda r: METHOD_ORDER.index(r.method) if r.method in METHOD_ORDER else 99)
