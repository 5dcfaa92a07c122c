"""Training speed: time of one training step and time to reach a validation PSNR, method by method.

Every method trains with the project's own :class:`~molrecon.train.trainer.Trainer` step (forward, loss with the
model's penalty, backward, clipping, AdamW, the MOL-LR safeguard) on the same data, batch, CNN (``channels`` ×
``layers``), seed and thread count; only the model section differs. Methods come from :data:`TRAIN_METHODS`
(``"modl-k1"``, ``"modl-k5"``, ``"modl-k10"``, ``"deq"``, ``"mol-sn"``, ``"mol-lr"``, and the ``*-cached``
variants with the training-speed levers on, ``"mol-lr-orthogonal"`` / ``"mol-sn-orthogonal"``, the shipped 2D
recipes, and ``"mol-lr-residual"`` / ``"mol-sn-sll"``, the residual MOL-LR and the SLL MOL-SN shipped before;
``"mol-lr@cg_iter=15"`` gives a method settings of its own); add one with :func:`register_train_method` (a
``"_train"`` key holds train-section settings of that method).

Interleaved. The methods of one dims train *side by side*: their trainers are built first and then take one
step each in turn, so that a load that changes over time (a shared machine) falls on every method alike and the
step-time ratios stay meaningful. Each trainer's random state (torch, numpy, python) is swapped in for its own
step, so every run is the run it would be alone.

Per run: the median and mean of the steps' own ``step_time`` (the trainer's timer: from ``zero_grad`` to the
optimiser and schedule step, no data loading, no validation; the first step is left out of the median as
warm-up), the mean forward iterations, and a validation curve every ``val_every`` steps. The time to reach a
PSNR is the summed step time up to the first validation at or above it — taken post hoc from the curves, for
``target_psnr`` or, by default, for the best PSNR that *every* method reached (so every method has a time).

Example (minutes on a CPU; the command line is ``molrecon bench train --methods modl-k10 mol-lr mol-lr-cached``)::

    rows = run_train_bench(["modl-k10", "mol-lr", "mol-lr-cached"], ["2d"], steps=20)
"""

from __future__ import annotations

import contextlib
import math
import statistics
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import InputError
from ..evaluate.report import markdown_table
from ..names import FIXED_POINT_METHODS
from ..train.config import parse_scalar
from ..train.trainer import Trainer
from ..weights.checkpoint import capture_rng_state, restore_rng_state
from .recipes import recipe_sections

# name -> model section (without dims/channels/layers, which the run sets the same for every method)
TRAIN_METHODS: dict[str, dict[str, Any]] = {
    "modl-k1": {"method": "modl", "K": 1, "lam": 0.05, "cg_iter": 10},
    "modl-k5": {"method": "modl", "K": 5, "lam": 0.05, "cg_iter": 10},
    "modl-k10": {"method": "modl", "K": 10, "lam": 0.05, "cg_iter": 10},
    "deq": {"method": "deq", "max_iter": 50, "tol": 1e-4, "cg_iter": 5},
    "mol-sn": {"method": "mol-sn", "max_iter": 50, "tol": 1e-4, "cg_iter": 5},
    "mol-lr": {"method": "mol-lr", "max_iter": 50, "tol": 1e-4, "cg_iter": 5, "lr_clip": 0.97},
    # the training-speed levers, none of which changes the fixed point: per-slice warm starts (and, for MOL-LR,
    # the amortised Lipschitz estimate continuing each slice's last adversarial point for 2 ascent steps)
    "mol-sn-cached": {"method": "mol-sn", "max_iter": 50, "tol": 1e-4, "cg_iter": 5,
                      "_train": {"fixed_point_cache": True}},
    "mol-lr-cached": {"method": "mol-lr", "max_iter": 50, "tol": 1e-4, "cg_iter": 5, "lr_clip": 0.97,
                      "lr_warm_steps": 2, "_train": {"fixed_point_cache": True}},
    # the residual MOL-LR shipped until 2026-12-07 (configs/mol_lr_2d.yaml), with its cache
    "mol-lr-residual": {"method": "mol-lr", "architecture": "residual", "residual_scale": 0.9, "solver": "anderson",
                        "anderson_m": 8, "max_iter": 50, "tol": 1e-4, "alpha": 1.0, "lam": 30.0, "learn_lam": False,
                        "cg_iter": 15, "lr_weight": 1e-5, "lr_threshold": 0.9, "lr_clip": None,
                        "lr_jacobian_steps": 3, "lr_jacobian_threshold": 0.95, "_train": {"fixed_point_cache": True}},
    # the SLL MOL-SN shipped until 2026-12-06 (configs/mol_sn_2d_sll.yaml), at 15 CG steps with the cache
    "mol-sn-sll": {"method": "mol-sn", "architecture": "sll", "state_channels": 16, "solver": "anderson",
                   "anderson_m": 8, "max_iter": 80, "tol": 1e-4, "alpha": 1.0, "lipschitz_target": 0.99,
                   "lam": 100.0, "cg_iter": 15, "_train": {"fixed_point_cache": True}},
}
#: The shipped 2D recipes: name -> (shipped model, changes). Each is the training config stored with that model
#: (so the entry follows whatever is shipped), MOL-SN at the 15 CG steps per block it trained with, with the cache.
SHIPPED_RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "mol-lr-orthogonal": ("mol-lr-2d-4x", {}),
    "mol-sn-orthogonal": ("mol-sn-2d-4x", {"cg_iter": 15, "_train": {"fixed_point_cache": True}}),
}
#: The reference of the step-time ratios (the unrolled network MOL replaces).
REFERENCE = "modl-k10"

#: Data and CNN per dims: the built-in sets with the CNNs of the shipped configs (``configs/*_2d.yaml``,
#: ``*_3d.yaml``, ``*_dynamic.yaml``).
DEFAULT_SIZES: dict[str, dict[str, Any]] = {
    "2d": {"data": {"source": "builtin", "kind": "2d", "mask": "random"}, "channels": 32, "layers": 5},
    "3d": {"data": {"source": "builtin", "kind": "3d", "mask": "poisson"}, "channels": 16, "layers": 5},
    "2d+t": {"data": {"source": "builtin", "kind": "dynamic", "mask": "random"}, "channels": 16, "layers": 5},
}


def shipped_recipe(name: str) -> dict[str, Any]:
    """The entry of :data:`SHIPPED_RECIPES` ``name``: the shipped model's training config (model section without
    dims/channels/layers, and its ``fixed_point_cache``) with the entry's changes."""
    shipped, changes = SHIPPED_RECIPES[name]
    method, model, recipe_train = recipe_sections(shipped)
    model = {"method": method, **model}
    train = {"fixed_point_cache": bool(recipe_train.get("fixed_point_cache", False))}
    train.update(changes.get("_train", {}))
    return {**model, **{k: v for k, v in changes.items() if k != "_train"}, "_train": train}


def register_train_method(name: str, model_section: dict[str, Any]) -> None:
    """Make ``name`` available to :func:`run_train_bench` (``model_section`` as in a training config, plus an
    optional ``"_train"`` mapping of train-section settings)."""
    if "method" not in model_section:
        raise InputError(f"train benchmark: the model section of {name!r} needs a 'method'")
    TRAIN_METHODS[name] = dict(model_section)


def _batches(trainer: Any):
    """The trainer's own batch order, epoch after epoch (as ``Trainer.fit`` draws it)."""
    epoch = 0
    while True:
        trainer.sampler.set_epoch(epoch)
        trainer.loader_gen.manual_seed(trainer.tcfg["seed"] * 1_000_003 + epoch * 7919)
        yield from trainer.loader
        epoch += 1


def parse_method(name: str) -> tuple[str, dict[str, Any]]:
    """``"mol-lr@cg_iter=15,max_iter=30"`` → ``("mol-lr", {"cg_iter": 15, "max_iter": 30})``: a registered
    method with model settings of its own (so that several settings train side by side)."""

    base, _, rest = name.partition("@")
    if base not in TRAIN_METHODS and base not in SHIPPED_RECIPES:
        known = sorted([*TRAIN_METHODS, *SHIPPED_RECIPES])
        raise InputError(f"train benchmark: unknown method {base!r}; known: {known}")
    own: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        if "=" not in item:
            raise InputError(f"train benchmark: {name!r}: expected KEY=VALUE after '@', got {item!r}")
        k, v = item.split("=", 1)
        own[k.strip()] = parse_scalar(v)
    return base, own


def _model_section(name: str, dims: str, channels: int | None, layers: int | None,
                   model_overrides: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    base, own = parse_method(name)
    size = DEFAULT_SIZES[dims]
    entry = {**(TRAIN_METHODS[base] if base in TRAIN_METHODS else shipped_recipe(base)), **own}
    train = dict(entry.pop("_train", {}))
    model = {**entry, "dims": dims, "channels": channels or size["channels"], "layers": layers or size["layers"]}
    if model["method"] != "modl":
        model.update(model_overrides or {})
    elif model_overrides:
        model.update({k: v for k, v in model_overrides.items() if k in ("lam", "cg_iter", "cg_tol")})
    return model, train


class _Run:
    """One method's trainer, its batch stream and its own random state."""

    def __init__(self, name: str, dims: str, config: dict[str, Any]) -> None:

        self.name, self.dims, self.model_section = name, dims, config["model"]
        self.trainer = Trainer(config, overwrite=True)
        self.trainer.setup()
        self.rng = capture_rng_state()
        self.batches = _batches(self.trainer)
        self.step_times: list[float] = []
        self.iters: list[float] = []
        self.curve: list[dict[str, float]] = []
        self.trained = 0.0

    def _swapped(self, fn: Callable[[], Any]) -> Any:

        outer = capture_rng_state()
        restore_rng_state(self.rng)
        try:
            return fn()
        finally:
            self.rng = capture_rng_state()
            restore_rng_state(outer)

    def step(self) -> None:
        logs = self._swapped(lambda: self.trainer.train_step(next(self.batches)))
        self.trainer.step += 1
        self.step_times.append(logs["step_time"])
        self.trained += logs["step_time"]
        if "fwd_iterations" in logs:
            self.iters.append(logs["fwd_iterations"])

    def validate(self) -> None:
        val = self._swapped(self.trainer.validate)
        if val:
            self.curve.append({"step": self.trainer.step, "train_seconds": self.trained,
                               "val_psnr": val["val_psnr"], "val_ssim": val["val_ssim"]})

    def row(self) -> dict[str, Any]:
        timed = self.step_times[1:] or self.step_times
        cache = self.trainer.fp_cache
        return {"method": self.name, "dims": self.dims, "model": self.model_section,
                "train_settings": {k: self.trainer.tcfg[k] for k in ("fixed_point_cache", "lr", "seed")},
                "steps": len(self.step_times), "train_slices": len(self.trainer.train_set),
                "step_time_median_s": statistics.median(timed), "step_time_mean_s": statistics.fmean(timed),
                "first_step_s": self.step_times[0],
                "fwd_iterations_mean": statistics.fmean(self.iters) if self.iters else None,
                "val_curve": self.curve, "final_val_psnr": self.curve[-1]["val_psnr"] if self.curve else None,
                "best_val_psnr": max((c["val_psnr"] for c in self.curve), default=None),
                "cache_hits": None if cache is None else cache.hits, "step_times_s": self.step_times}


def train_side_by_side(names: Sequence[str], dims: str, steps: int = 40, val_every: int = 10,
                       channels: int | None = None, layers: int | None = None, data: dict[str, Any] | None = None,
                       model_overrides: dict[str, Any] | None = None, train_overrides: dict[str, Any] | None = None,
                       device: str = "cpu", seed: int = 0) -> list[dict[str, Any]]:
    """Train methods ``names`` at ``dims`` interleaved, ``steps`` steps each; their timings and val curves."""
    if dims not in DEFAULT_SIZES:
        raise InputError(f"train benchmark: dims must be among {list(DEFAULT_SIZES)}, got {dims!r}")
    if steps < 2 or val_every < 1:
        raise InputError(f"train benchmark: need steps >= 2 and val_every >= 1, got {steps}, {val_every}")
    sections = [_model_section(n, dims, channels, layers, model_overrides) for n in names]
    with contextlib.ExitStack() as stack:
        runs = []
        for name, (model, train) in zip(names, sections):
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="molrecon-bench-train-"))
            config = {"out_dir": tmp, "device": device, "model": model,
                      "data": {**DEFAULT_SIZES[dims]["data"], "limit_val": 4, **(data or {})},
                      "train": {"max_steps": steps, "seed": seed, "val_every": 0, "tensorboard": False,
                                "progress": False, "lipschitz_patience": 10 ** 9, "residual_limit": math.inf,
                                **(train_overrides or {}), **train}}
            runs.append(_Run(name, dims, config))
            stack.callback(runs[-1].trainer.close)
        for k in range(1, steps + 1):
            for run in runs:
                run.step()
            if k % val_every == 0 or k == steps:
                for run in runs:
                    run.validate()
        return [run.row() for run in runs]


def time_to_psnr(curve: Sequence[dict[str, float]], target: float) -> float | None:
    """Summed step time at the first validation with PSNR ≥ ``target`` (``None`` if never reached)."""
    for c in curve:
        if c["val_psnr"] >= target:
            return float(c["train_seconds"])
    return None


def summarize_train(rows: list[dict[str, Any]], target_psnr: float | None = None) -> list[dict[str, Any]]:
    """Add ``target_psnr``, ``time_to_target_s`` and ``step_over_<reference>`` to every row (in place)."""
    for dims in dict.fromkeys(r["dims"] for r in rows):
        sub = [r for r in rows if r["dims"] == dims]
        bests = [r["best_val_psnr"] for r in sub if r["best_val_psnr"] is not None]
        target = target_psnr if target_psnr is not None else (min(bests) if bests else None)
        ref = next((r for r in sub if r["method"] == REFERENCE), None)
        for r in sub:
            r["target_psnr"] = target
            r["target_rule"] = "given" if target_psnr is not None else "best PSNR every method reached"
            r["time_to_target_s"] = None if target is None else time_to_psnr(r["val_curve"], target)
            r[f"step_over_{REFERENCE}"] = (r["step_time_median_s"] / ref["step_time_median_s"]
                                           if ref is not None else None)
    return rows


#: the methods ``molrecon bench train`` compares by default: MoDL at three depths and every fixed-point method
DEFAULT_TRAIN_METHODS: tuple[str, ...] = ("modl-k1", "modl-k5", "modl-k10", *FIXED_POINT_METHODS)


def run_train_bench(methods: Sequence[str] = DEFAULT_TRAIN_METHODS,
                    dims_list: Sequence[str] = ("2d",), steps: int = 40, val_every: int = 10,
                    target_psnr: float | None = None, channels: dict[str, int] | None = None,
                    layers: int | None = None, data: dict[str, dict[str, Any]] | None = None,
                    model_overrides: dict[str, Any] | None = None, train_overrides: dict[str, Any] | None = None,
                    threads: int = 1, device: str = "cpu", seed: int = 0,
                    on_row: Callable[[dict, list[dict]], None] | None = None) -> list[dict]:
    """:func:`train_side_by_side` for every dims in turn, same threads; then :func:`summarize_train`."""
    for m in methods:
        parse_method(m)  # a clear error before anything trains
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows: list[dict] = []
    try:
        for dims in dims_list:
            for row in train_side_by_side(methods, dims, steps, val_every, (channels or {}).get(dims), layers,
                                          (data or {}).get(dims), model_overrides, train_overrides, device, seed):
                rows.append(row)
                if on_row is not None:
                    on_row(row, rows)
    finally:
        torch.set_num_threads(threads_before)
    return summarize_train(rows, target_psnr)


def train_markdown(rows: Sequence[dict[str, Any]], settings: dict[str, Any] | None = None) -> str:
    """``train.md``: step time, its ratio to MoDL K=10, forward iterations, time to the target PSNR."""

    def f(v: Any, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    table = [{"dims": r["dims"], "method": r["method"],
              "step (s, median)": f(r["step_time_median_s"], ".3f"),
              f"÷ {REFERENCE}": f(r.get(f"step_over_{REFERENCE}"), ".2f"),
              "fwd iters": f(r["fwd_iterations_mean"], ".1f"),
              "best val PSNR": f(r["best_val_psnr"], ".2f"),
              "target PSNR": f(r.get("target_psnr"), ".2f"),
              "time to target (s)": ("not reached" if r.get("time_to_target_s") is None and
                                     r.get("target_psnr") is not None else f(r.get("time_to_target_s"), ".1f"))}
             for r in rows]
    head = "Training speed: one step (forward + loss + backward + AdamW), and summed step time to a validation PSNR\n"
    if settings:
        head += "\n" + ", ".join(f"{k}: {v}" for k, v in settings.items()) + "\n"
    return head + "\n" + markdown_table(table, list(table[0]) if table else [])


__all__ = ["TRAIN_METHODS", "SHIPPED_RECIPES", "shipped_recipe", "DEFAULT_SIZES", "parse_method",
           "register_train_method", "train_side_by_side", "run_train_bench", "summarize_train", "time_to_psnr",
           "train_markdown"]
