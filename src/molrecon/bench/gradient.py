"""Gradient error of the backward modes (:mod:`molrecon.solvers.backward`) against the implicit gradient.

For each model (a shipped pretrained MOL or any fixed-point model) and each of the first ``slices`` built-in
training slices (the training mask: random, the model's acceleration), the parameter gradient of the training
data loss (magnitude MSE / max², :func:`~molrecon.train.losses.mse_magnitude`; a penalty such as MOL-LR's does not
pass through the fixed point, so it is left out) is computed once per backward mode, all from the same fixed
point: the model first solves the slice, then every mode starts from that solution (as with the training
fixed-point cache), so only the backward differs. The reference is the implicit gradient with a tight adjoint
tolerance (``reference_tol``); the model's own implicit setting is one of the measured modes.

Per (model, slice, mode): cosine similarity and relative error ``‖g − g_ref‖ / ‖g_ref‖`` of the concatenated
parameter gradient (CNN and λ), and the time of forward-from-the-fixed-point + backward. Modes are written
``"jfb"``, ``"phantom@steps=5,damping=0.5"`` (the model's ``backward_steps``/``backward_damping``) or
``"implicit@tol=1e-3"`` (the adjoint solve's ``backward_tol``; ``max_iter``: ``backward_max_iter``; ``cg_iter``:
``backward_cg_iter``).

Example (a few minutes on one CPU thread; the command line is ``molrecon bench gradient``)::

    rows = run_gradient_bench(["mol-lr-2d-4x"], slices=2, modes=["implicit", "jfb"])
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..data import collate, physics_from_batch
from ..data.builtin import builtin_dataset, normalize_kind
from ..errors import InputError
from ..evaluate.report import markdown_table
from ..names import DIMS_OF_KIND
from ..physics import mask_for
from ..solvers.backward import BACKWARD_MODES
from ..train.config import parse_scalar
from ..train.losses import mse_magnitude
from ..weights.loading import load_learned_model

DEFAULT_MODES: tuple[str, ...] = ("implicit", "jfb", "phantom@steps=2,damping=0.5", "phantom@steps=5,damping=0.5",
                                  "phantom@steps=10,damping=0.5", "phantom@steps=5,damping=1.0")
DEFAULT_MODELS: tuple[str, ...] = ("mol-lr-2d-4x", "mol-sn-2d-4x")
#: per mode, the model attribute of each option written after '@'
_OPTION_ATTR = {"phantom": {"steps": "backward_steps", "damping": "backward_damping"},
                "implicit": {"tol": "backward_tol", "max_iter": "backward_max_iter", "cg_iter": "backward_cg_iter"}}


def parse_mode(text: str) -> tuple[str, dict[str, Any]]:
    """``"phantom@steps=5,damping=0.5"`` → ``("phantom", {"backward_steps": 5, "backward_damping": 0.5})``;
    ``"implicit@tol=1e-3,max_iter=20,cg_iter=8"`` sets the adjoint solve's ``backward_tol``/``backward_max_iter``
    and the CG steps of each DC backward inside it (``backward_cg_iter``)."""
    name, _, rest = text.partition("@")
    if name not in BACKWARD_MODES:
        raise InputError(f"gradient benchmark: unknown backward mode {name!r}; known: {sorted(BACKWARD_MODES)}")
    settings: dict[str, Any] = {}
    known = _OPTION_ATTR.get(name, {})
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in known:
            raise InputError(f"gradient benchmark: {text!r}: {name} takes {', '.join(known) or 'no options'} "
                             f"after '@', got {item!r}")
        settings[known[key.strip()]] = parse_scalar(value)
    return name, settings


def _flat_grad(model: torch.nn.Module, y: torch.Tensor, physics: Any, x0: torch.Tensor, target: torch.Tensor,
               max_value: torch.Tensor) -> tuple[torch.Tensor, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    t0 = time.perf_counter()
    x_hat = model(y, physics, x0=x0)
    grads = torch.autograd.grad(mse_magnitude(x_hat, target, max_value), params, allow_unused=True)
    seconds = time.perf_counter() - t0
    flat = torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)])
    return flat.double(), seconds


def _with_mode(model: torch.nn.Module, name: str, settings: dict[str, Any], fn: Callable[..., Any],
               *args: Any) -> Any:
    """``fn(model, *args)`` with the model's backward set to ``name`` + ``settings``; restored after."""
    keys = ("backward", *settings)
    before = {k: getattr(model, k) for k in keys}
    try:
        model.backward = name
        for k, v in settings.items():
            setattr(model, k, v)
        return fn(model, *args)
    finally:
        for k, v in before.items():
            setattr(model, k, v)


def gradient_errors(model: torch.nn.Module, examples: Sequence[tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]],
                    modes: Sequence[str],
                    reference_tol: float = 1e-7, reference_max_iter: int = 1000,
                    label: str = "") -> list[dict[str, Any]]:
    """One row per (example, mode) with ``cosine``, ``rel_error`` and ``seconds`` against the tight implicit
    gradient (see the module docstring); ``examples`` are ``(y, physics, target, max_value)``."""
    if not hasattr(model, "backward"):
        raise InputError(f"gradient benchmark: {label or type(model).__name__} has no backward modes "
                         f"(only the fixed-point methods do)")
    parsed = [(m, *parse_mode(m)) for m in modes]
    rows: list[dict[str, Any]] = []
    for i, (y, physics, target, max_value) in enumerate(examples):
        x_star, _ = model.solve(y, physics)
        ref_settings = {"backward_tol": reference_tol, "backward_max_iter": reference_max_iter,
                        "backward_cg_iter": None}
        args = (y, physics, x_star, target, max_value)
        g_ref, _ = _with_mode(model, "implicit", ref_settings, _flat_grad, *args)
        for text, name, settings in parsed:
            g, seconds = _with_mode(model, name, settings, _flat_grad, *args)
            binfo = getattr(model, "last_backward_info", None)
            cos = float(torch.dot(g, g_ref) / (g.norm() * g_ref.norm()).clamp_min(1e-300))
            rows.append({"model": label, "slice": i, "mode": text, "cosine": cos,
                         "rel_error": float((g - g_ref).norm() / g_ref.norm().clamp_min(1e-300)),
                         "grad_norm_ratio": float(g.norm() / g_ref.norm().clamp_min(1e-300)),
                         "seconds": seconds,
                         "adjoint_iterations": None if binfo is None else float(binfo.iterations.float().mean())})
    return rows


def training_batches(kind: str = "2d", slices: int = 4, acceleration: float = 4.0,
                     center_fraction: float = 0.08, mask: str = "random") -> list[tuple]:
    """The first ``slices`` built-in training slices, with the training mask, as ``(y, physics, target,
    max_value)`` batches of one."""
    mask_func = mask_for(DIMS_OF_KIND[normalize_kind(kind)], acceleration,
                         center_fraction, kind=mask)
    ds = builtin_dataset(kind, "train", mask_func=mask_func)
    if slices < 1 or slices > len(ds):
        raise InputError(f"gradient benchmark: slices must be in 1..{len(ds)}, got {slices}")
    batches = [collate([ds[i]]) for i in range(slices)]
    return [(b["kspace"], physics_from_batch(b), b["target"], b["max_value"]) for b in batches]


def summarize_gradient(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, mode): mean and worst cosine, mean and worst relative error, median seconds."""
    out = []
    for key in dict.fromkeys((r["model"], r["mode"]) for r in rows):
        sub = [r for r in rows if (r["model"], r["mode"]) == key]
        out.append({"model": key[0], "mode": key[1], "slices": len(sub),
                    "cosine_mean": statistics.fmean(r["cosine"] for r in sub),
                    "cosine_min": min(r["cosine"] for r in sub),
                    "rel_error_mean": statistics.fmean(r["rel_error"] for r in sub),
                    "rel_error_max": max(r["rel_error"] for r in sub),
                    "grad_norm_ratio_mean": statistics.fmean(r["grad_norm_ratio"] for r in sub),
                    "seconds_median": statistics.median(r["seconds"] for r in sub),
                    "adjoint_iterations_mean": (statistics.fmean(r["adjoint_iterations"] for r in sub)
                                                if all(r.get("adjoint_iterations") is not None for r in sub)
                                                else None)})
    return out


def run_gradient_bench(models: Sequence[str] = DEFAULT_MODELS, slices: int = 4,
                       modes: Sequence[str] = DEFAULT_MODES, threads: int = 1, reference_tol: float = 1e-7,
                       kind: str = "2d") -> dict[str, Any]:
    """Load each pretrained model, measure :func:`gradient_errors` on the training slices; rows + summary."""
    for m in modes:
        parse_mode(m)  # a clear error before anything runs
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        batches = training_batches(kind, slices)
        rows: list[dict[str, Any]] = []
        settings: dict[str, dict[str, Any]] = {}
        for name in models:
            model = load_learned_model(pretrained=name)
            settings[name] = {k: getattr(model, k, None) for k in ("max_iter", "tol", "cg_iter", "solver",
                                                                   "backward_tol", "backward_max_iter",
                                                                   "backward_cg_iter")}
            rows += gradient_errors(model, batches, modes, reference_tol=reference_tol, label=name)
    finally:
        torch.set_num_threads(threads_before)
    return {"rows": rows, "summary": summarize_gradient(rows), "model_settings": settings,
            "reference": f"implicit, adjoint tol {reference_tol:g}", "threads": threads, "slices": slices}


def gradient_markdown(result: dict[str, Any]) -> str:
    """``gradient.md``: the summary table."""
    table = [{"model": s["model"], "mode": s["mode"], "slices": s["slices"],
              "cosine (mean)": f"{s['cosine_mean']:.4f}", "cosine (min)": f"{s['cosine_min']:.4f}",
              "rel. error (mean)": f"{s['rel_error_mean']:.3g}", "rel. error (max)": f"{s['rel_error_max']:.3g}",
              "‖g‖/‖g_ref‖": f"{s['grad_norm_ratio_mean']:.3f}",
              "adjoint iters": ("–" if s.get("adjoint_iterations_mean") is None
                                else f"{s['adjoint_iterations_mean']:.1f}"),
              "fwd+bwd from x* (s, median)": f"{s['seconds_median']:.2f}"} for s in result["summary"]]
    head = (f"Gradient error of the backward modes against the reference ({result['reference']}), parameter "
            f"gradient of the training data loss, first {result['slices']} built-in training slices, "
            f"{result['threads']} thread(s)\n")
    return head + "\n" + markdown_table(table, list(table[0]) if table else [])


__all__ = ["DEFAULT_MODES", "DEFAULT_MODELS", "parse_mode", "gradient_errors", "training_batches",
           "summarize_gradient", "run_gradient_bench", "gradient_markdown"]
