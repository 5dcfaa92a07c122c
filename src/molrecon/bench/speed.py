r"""Inference speed: time per slice/volume, forward iterations to ``tol`` (plain vs Anderson) and where the
time goes (CNN vs FFT vs CG vector work vs the rest).

Profile
-------
The models mark their parts with named timing regions (:mod:`molrecon.solvers.timing`, no-ops unless a
timer is active); one reconstruction runs under an :class:`~molrecon.solvers.timing.ExclusiveTimer`:

- ``cnn``: every application of the CNN — MOL's :math:`H(x)` or ``MoDL.denoise`` (:math:`D_w(x)`);
- ``fft``: the encoding operator — ``A``, ``A_adjoint``, ``normal`` of :class:`TimedMRI`, the same operator
  with its applications in a region (coil-map products and the centred FFTs);
- ``cg``: the conjugate-gradient solver's own work (dot products, axpys) — its calls of ``physics.normal`` are
  charged to ``fft``;
- ``init``: MOL's CG-SENSE start (``MOL.initial_image``, ``init_cg_iter`` CG iterations; FFTs inside charged
  here);
- ``final-dc``: MOL's last exact data-consistency solve (CG to ``cg_tol``, up to ``dc_exact_iter`` iterations;
  FFTs inside charged here);
- ``error-bound``: MOL's a-posteriori bound (the Lipschitz constant it uses: for MOL-LR/DEQ in eval mode a
  10-step Jacobian power iteration — CNN JVP/VJPs charged here, not to ``cnn``, since it is not part of the
  solve);
- ``cnn-weights``: the effective CNN weights (MOL-SN: certified spectral norms, cached per shape);
- ``other``: the remainder of the wall time (fixed-point/Anderson updates, norms, checks, Python).

Time is charged *exclusively* to the innermost timer (a stack), so the shares add up to 1 by construction
with ``other`` the unattributed rest. On CUDA each timer synchronises the device (the figures then include
the lost overlap; say so when comparing). The timed runs for the time per slice run without the timers.

Optionally a :mod:`torch.profiler` table of the top operators by self time is added, to locate precisely
what dominates when it is not the CNN.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from ..data.builtin import builtin_dataset, normalize_kind
from ..data.slice_dataset import collate, physics_from_batch
from ..errors import InputError
from ..evaluate.methods import is_fixed_point_model, run
from ..evaluate.report import markdown_table
from ..names import DIMS_OF_KIND, FIXED_POINT_METHODS
from ..physics import MultiCoilMRI, mask_for
from ..solvers.timing import ExclusiveTimer, region, timing
from ..tensor_utils import batch_norms
from ..weights.loading import resolve_model

CATEGORIES = ("cnn", "fft", "cg", "init", "final-dc", "error-bound", "cnn-weights", "other")


class TimedMRI(MultiCoilMRI):
    """The same encoding operator with its applications (``A``, ``A_adjoint``, ``normal``) in the ``fft``
    timing region (:mod:`molrecon.solvers.timing`); a batch subset is a plain operator (not timed: those
    applications fall to the enclosing region)."""

    @classmethod
    def of(cls, physics: MultiCoilMRI) -> TimedMRI:
        return cls(physics.maps, physics.mask, physics.dims)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        with region("fft"):
            return super().A(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        with region("fft"):
            return super().A_adjoint(y)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        with region("fft"):
            return super().normal(x)


def infer(model: Any, y: torch.Tensor, physics: Any, **overrides: Any) -> tuple[torch.Tensor, Any]:
    """One reconstruction without gradients: ``(x, info)`` (:func:`molrecon.evaluate.methods.run`);
    ``overrides`` are MOL's per-call solver settings (``MOL.solve``)."""
    return run(model, y, physics, **overrides)


def _sync_fn(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def profile_inference(model: Any, y: torch.Tensor, physics: Any) -> dict[str, Any]:
    """Time one reconstruction with the component timers; returns ``{"total_s", "seconds": {cat: s},
    "shares": {cat: fraction}, "calls": {cat: n}, "cnn_share"}`` (shares sum to 1).

    The models mark their parts with timing regions (:mod:`molrecon.solvers.timing`); the operator is
    timed through :class:`TimedMRI`. Nothing of the model is replaced or read from its internals."""
    if not (is_fixed_point_model(model) or hasattr(model, "denoise")):
        raise InputError(f"speed profile: do not know where the CNN of {type(model).__name__} is")
    sync = _sync_fn(y.device)
    timer = ExclusiveTimer(sync)
    timed = TimedMRI.of(physics)
    with timing(timer):
        t0 = timer.start()
        infer(model, y, timed)
        sync()
        total = time.perf_counter() - t0
    seconds = {c: timer.totals.get(c, 0.0) for c in CATEGORIES if c != "other"}
    seconds["other"] = max(0.0, total - sum(seconds.values()))
    shares = {c: v / total for c, v in seconds.items()}
    return {"total_s": total, "seconds": seconds, "shares": shares, "calls": dict(timer.calls),
            "cnn_share": shares["cnn"]}


def torch_profile(model: Any, y: torch.Tensor, physics: Any, top: int = 12) -> list[dict[str, Any]]:
    """The ``top`` operators by self time (CPU, plus CUDA when on GPU) of one reconstruction."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if y.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        infer(model, y, physics)
    events = prof.key_averages()
    key = "self_cuda_time_total" if y.device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, key, 0.0) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, key, 0.0), reverse=True)[:top]
    return [{"op": e.key, "self_ms": getattr(e, key, 0.0) / 1e3, "share": getattr(e, key, 0.0) / total,
             "calls": int(e.count)} for e in ranked]


def time_inference(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1,
                   device: torch.device | None = None) -> dict[str, Any]:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones."""
    sync = _sync_fn(device or torch.device("cpu"))
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times_s": times}


def iterations_to_tol(model: Any, examples: Sequence[tuple[torch.Tensor, Any]], tol: float = 1e-4,
                      max_iter: int = 500, anderson_answers: list[torch.Tensor] | None = None,
                      cg_iter: int | None = None) -> dict[str, dict[str, Any]]:
    """Forward iterations of a MOL/DEQ model to relative change ``tol`` with the plain and the Anderson
    solver (same start, same model), averaged over ``examples``; plus the wall time of each solve.
    ``anderson_answers``, when given, receives the Anderson reconstructions (one per example); ``cg_iter``
    replaces the model's CG steps per block for these solves."""
    out: dict[str, dict[str, Any]] = {}
    for solver in ("plain", "anderson"):
        its, conv, secs = [], [], []
        settings = {"solver": solver, "tol": float(tol), "max_iter": int(max_iter), "strict": False,
                    "cg_iter": cg_iter}
        for y, physics in examples:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # non-convergence is reported below
                t0 = time.perf_counter()
                x, info = infer(model, y, physics, **settings)
                secs.append(time.perf_counter() - t0)
            if solver == "anderson" and anderson_answers is not None:
                anderson_answers.append(x)
            its.extend(int(v) for v in info.iterations.tolist())
            conv.extend(bool(v) for v in info.converged.tolist())
        out[solver] = {"iterations": statistics.mean(its), "iterations_all": its,
                       "converged_fraction": sum(conv) / len(conv), "seconds": statistics.mean(secs)}
    out["anderson_over_plain"] = out["anderson"]["iterations"] / max(out["plain"]["iterations"], 1e-9)
    return out


def dc_iterations_sweep(model: Any, examples: Sequence[tuple[torch.Tensor, Any]], cg_iters: Sequence[int],
                        tol: float = 1e-4, max_iter: int = 500) -> list[dict[str, Any]]:
    """Outer iterations and time to ``tol`` (plain and Anderson) as a function of the CG steps of the
    data-consistency solve inside each block (``model.cg_iter``).

    The inner CG is warm-started at the current iterate, so every ``cg_iter`` has the same fixed points (at a
    fixed point the CG residual is zero); what changes is the map between them: with few CG steps the block is
    a partial, iterate-dependent DC step — slower to contract and non-smooth for Anderson's secant model. Each
    row also gives the largest relative distance of the Anderson answers (solved to ``tol``) from those at the
    model's own ``cg_iter``.
    """
    own = int(model.cg_iter)
    values = list(dict.fromkeys([own, *(int(n) for n in cg_iters)]))
    answers: dict[int, list[torch.Tensor]] = {}
    rows = []
    for n in values:
        answers[n] = []
        its = iterations_to_tol(model, examples, tol=tol, max_iter=max_iter, anderson_answers=answers[n], cg_iter=n)
        rows.append({"cg_iter": n, "plain": its["plain"], "anderson": its["anderson"],
                     "anderson_over_plain": its["anderson_over_plain"]})
    for row in rows:
        row["max_rel_diff_vs_own"] = max(float(batch_norms(a - b).max() / batch_norms(b).max())
                                         for a, b in zip(answers[row["cg_iter"]], answers[own]))
        row["own"] = row["cg_iter"] == own
    return sorted(rows, key=lambda r: r["cg_iter"])


def random_mol(method: str, dims: str, channels: int = 32, layers: int = 5, seed: int = 0, **kw: Any):
    """An untrained MOL (``mol-lr``/``mol-sn``/``deq``) with the configs' CNN; for timings only — its iteration
    counts are NOT those of a trained model (label them so)."""
    if method not in FIXED_POINT_METHODS:
        raise InputError(f"random_mol: {method!r} is not a MOL method ({', '.join(FIXED_POINT_METHODS)})")
    return resolve_model(config={"method": method, "dims": dims, "channels": channels, "layers": layers, **kw},
                         seed=seed).model


def random_modl(dims: str, K: int = 10, channels: int = 32, layers: int = 5, seed: int = 0):
    """An untrained MoDL with the configs' CNN and K (timings only)."""
    return resolve_model(config={"method": "modl", "K": K, "dims": dims, "channels": channels, "layers": layers},
                         seed=seed).model


def load_examples(kind: str = "2d", count: int = 2, acceleration: float = 4.0,
                  device: str = "cpu") -> list[tuple[torch.Tensor, Any]]:
    """``count`` test items of the built-in ``kind`` set (built if absent) as ``(y, physics)`` on ``device``;
    ``y`` is the masked k-space (the file's k-space is fully sampled)."""
    kind = normalize_kind(kind)
    ds = builtin_dataset(kind, "test", mask_func=mask_for(DIMS_OF_KIND[kind], acceleration))
    if count < 1:
        raise InputError(f"speed benchmark: need at least one example, got {count}")
    # spread the examples over the split (different contrasts/positions)
    step = max(1, len(ds) // count)
    out = []
    for i in range(0, min(len(ds), step * count), step):
        batch = collate([ds[i]])
        physics = physics_from_batch(batch).to(device)
        y = (physics.sampling_weights() * batch["kspace"].to(device)).to(torch.complex64)
        out.append((y, physics))
    return out


def bench_model(label: str, model: Any, examples: Sequence[tuple[torch.Tensor, Any]], source: str,
                repeats: int = 3, tol: float = 1e-4, max_iter: int = 500, with_torch_profile: bool = True,
                note: str = "", cg_iters: Sequence[int] = ()) -> dict[str, Any]:
    """Everything ``bench speed`` reports for one learned model (see the module docstring)."""
    device = examples[0][0].device
    times = [time_inference(lambda y=y, p=p: infer(model, y, p), repeats=repeats, device=device)["median_s"]
             for y, p in examples]
    _, info = infer(model, *examples[0])
    profiles = [profile_inference(model, y, p) for y, p in examples]
    cats = profiles[0]["shares"].keys()
    shares = {c: statistics.mean(p["shares"][c] for p in profiles) for c in cats}
    row: dict[str, Any] = {
        "label": label, "method": getattr(model, "method_name", type(model).__name__), "source": source,
        "note": note, "time_per_item_s": statistics.mean(times), "times_s": times,
        "default_solver": getattr(model, "solver", None), "default_tol": getattr(model, "tol", None),
        "default_iterations": None if info is None else float(info.iterations.float().mean()),
        "profile": {"shares": shares, "cnn_share": shares["cnn"],
                    "seconds": {c: statistics.mean(p["seconds"][c] for p in profiles) for c in cats},
                    "calls": profiles[0]["calls"], "total_s": statistics.mean(p["total_s"] for p in profiles)},
    }
    if is_fixed_point_model(model):
        row["iterations"] = iterations_to_tol(model, examples, tol=tol, max_iter=max_iter)
        if cg_iters:
            row["dc_sweep"] = dc_iterations_sweep(model, examples, cg_iters, tol=tol, max_iter=max_iter)
    if with_torch_profile:
        row["torch_profile_top_ops"] = torch_profile(model, *examples[0])
    return row


def bench_classical(method: str, examples: Sequence[tuple[torch.Tensor, Any]], repeats: int = 1) -> dict[str, Any]:
    """Time per item of a classical method (default parameters of :mod:`molrecon.recon`)."""
    times = [time_inference(lambda y=y, p=p: run(method, y, p), repeats=repeats,
                            warmup=0, device=y.device)["median_s"] for y, p in examples]
    return {"label": method, "method": method, "source": "classical", "time_per_item_s": statistics.mean(times),
            "times_s": times}


def speed_markdown(results: dict[str, Any]) -> str:
    """Tables of ``speed.md``: time per item and CNN share; iterations plain vs Anderson; top operators."""
    unit = "slice" if results.get("dims") == "2d" else "volume"
    rows = []
    for m in results["models"]:
        p = m.get("profile")
        rows.append({"model": m["label"], "source": m["source"], f"time/{unit} (s)": f"{m['time_per_item_s']:.3f}",
                     "iterations (default)": "" if m.get("default_iterations") is None
                     else f"{m['default_iterations']:.1f}",
                     **({f"{c} %": f"{100 * v:.1f}" for c, v in p["shares"].items()} if p else {})})
    cols = ["model", "source", f"time/{unit} (s)", "iterations (default)"] + [f"{c} %" for c in CATEGORIES]
    lines = [f"Inference on {results['data']} ({results['device']}, {results['threads']} thread(s))\n",
             markdown_table(rows, cols)]
    it_rows = [{"model": m["label"],
                "plain iters": f"{m['iterations']['plain']['iterations']:.1f}",
                "plain converged": f"{m['iterations']['plain']['converged_fraction']:.2f}",
                "Anderson iters": f"{m['iterations']['anderson']['iterations']:.1f}",
                "Anderson converged": f"{m['iterations']['anderson']['converged_fraction']:.2f}",
                "Anderson / plain": f"{m['iterations']['anderson_over_plain']:.2f}",
                "plain s": f"{m['iterations']['plain']['seconds']:.2f}",
                "Anderson s": f"{m['iterations']['anderson']['seconds']:.2f}"}
               for m in results["models"] if m.get("iterations")]
    if it_rows:
        lines += [f"\nForward iterations to tol {results['tol']:g} (max {results['max_iter']}); acceptance: "
                  "Anderson ≤ 0.5 × plain\n", markdown_table(it_rows, list(it_rows[0]))]
    sweep_rows = [{"model": m["label"] + (" (own)" if r["own"] else ""), "CG steps per block": r["cg_iter"],
                   "plain iters": f"{r['plain']['iterations']:.1f}", "plain s": f"{r['plain']['seconds']:.2f}",
                   "Anderson iters": f"{r['anderson']['iterations']:.1f}",
                   "Anderson s": f"{r['anderson']['seconds']:.2f}",
                   "Anderson / plain": f"{r['anderson_over_plain']:.2f}",
                   "converged (plain/Anderson)": f"{r['plain']['converged_fraction']:.2f} / "
                                                 f"{r['anderson']['converged_fraction']:.2f}",
                   "answer vs own": f"{r['max_rel_diff_vs_own']:.1e}"}
                  for m in results["models"] for r in m.get("dc_sweep", [])]
    if sweep_rows:
        lines += ["\nOuter iterations vs CG steps of the data-consistency solve in each block (same fixed points; "
                  "'answer vs own': largest relative distance from the answer at the model's own setting)\n",
                  markdown_table(sweep_rows, list(sweep_rows[0]))]
    top = next((m for m in results["models"] if m.get("torch_profile_top_ops")), None)
    if top is not None:
        op_rows = [{"op": o["op"], "self ms": f"{o['self_ms']:.1f}", "share %": f"{100 * o['share']:.1f}",
                    "calls": o["calls"]} for o in top["torch_profile_top_ops"]]
        lines += [f"\ntorch.profiler, top operators by self time ({top['label']}, one reconstruction)\n",
                  markdown_table(op_rows, ["op", "self ms", "share %", "calls"])]
    notes = [m["label"] + ": " + m["note"] for m in results["models"] if m.get("note")]
    notes += results.get("notes", [])
    if notes:
        lines.append("\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    return "\n".join(lines)
