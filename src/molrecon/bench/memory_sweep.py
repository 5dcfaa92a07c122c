"""The sweep behind ``molrecon bench memory``: :func:`~molrecon.bench.memory.measure_step_memory` over dims ×
method × iterations, MoDL's linear fit and MOL's flatness (:func:`summarize_memory`), and the markdown tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InputError
from ..evaluate.report import markdown_table
from ..names import DIMS, FIXED_POINT_METHODS
from .memory import measure_step_memory

#: Iterations measured by default (the full grid): MoDL's unrolled K, MOL's forward max_iter.
DEFAULT_ITERS: dict[str, list[int]] = {"modl": [1, 2, 5, 10, 20], "mol-lr": [5, 10, 20, 50],
                                       "mol-sn": [5, 10, 20, 50]}
#: Problem sizes per dims: 2D is 12 coils at 256×256; 3D and 2D+t are sized to run on 2 CPU cores
#: (the built-in dynamic series' 12×96×96; a 32×64×64 slab of the built-in 64³ volumes) with the 16-channel
#: 3×3×3 CNN of ``configs/mol_lr_3d.yaml``/``mol_lr_dynamic.yaml``.
DEFAULT_SIZES: dict[str, dict] = {
    "2d": {"shape": [256, 256], "coils": 12, "channels": 64, "layers": 5},
    "3d": {"shape": [32, 64, 64], "coils": 8, "channels": 16, "layers": 5},
    "2d+t": {"shape": [12, 96, 96], "coils": 8, "channels": 16, "layers": 5},
}
MIB = float(2 ** 20)


def _mol_kwargs(method: str, force_iters: bool) -> dict:
    """MOL: ``tol=1e-12`` makes the forward (and the adjoint solve, tol/10) run all ``max_iter`` iterations —
    otherwise a converged early stop would make "flat in max_iter" trivially true."""
    return {"tol": 1e-12} if force_iters and method != "modl" else {}


def run_memory_sweep(methods: Sequence[str] = ("modl", "mol-lr", "mol-sn"),
                     dims_list: Sequence[str] = DIMS,
                     iters: dict[str, Sequence[int]] | None = None,
                     sizes: dict[str, dict] | None = None, batch: int = 1, acceleration: float = 4.0,
                     device: str = "cpu", seed: int = 0, threads: int = 1, repeats: int = 1,
                     force_iters: bool = True, timeout: float = 3600.0,
                     on_row: Callable[[dict, list[dict]], None] | None = None,
                     model_settings: dict[str, Any] | None = None, allocated: bool = True,
                     penalty_backward: str = "joint",
                     method_settings: dict[str, dict[str, Any]] | None = None) -> list[dict]:
    """Measure :func:`measure_step_memory` over ``dims × method × iterations``, sequentially.

    Every row follows the ``memory.json`` contract ``{"method", "iters", "dims", "shape", "peak_mib",
    "device"}`` plus diagnostics (coils, channels, layers, the forward/backward iterations actually run,
    seconds of the step, and the running peak after each phase: forward, loss, backward, optimiser step).
    ``on_row(row, rows_so_far)`` is called after each measurement (the CLI rewrites the JSON there, so a long
    sweep that is interrupted keeps what it measured). ``model_settings``: model keys for every method but MoDL
    (e.g. ``architecture``); ``method_settings``: model keys per method, under ``model_settings`` (e.g. a shipped
    recipe's, :func:`molrecon.bench.recipes.recipe_settings`). ``allocated``: each row also
    gets the exact peak of live tensor memory, ``allocated_mib`` (and per phase), see the module docstring.
    ``penalty_backward``: ``"after_data"`` backpropagates MOL-LR's penalty after the data term, as the trainer's
    ``train.penalty_backward``.
    """
    iters = {**DEFAULT_ITERS, **(iters or {})}
    sizes = {d: {**DEFAULT_SIZES.get(d, {}), **(sizes or {}).get(d, {})} for d in dims_list}
    rows: list[dict] = []
    for dims in dims_list:
        if dims not in DEFAULT_SIZES:
            raise InputError(f"memory benchmark: dims must be among {list(DEFAULT_SIZES)}, got {dims!r}")
        sz = sizes[dims]
        if len(sz["shape"]) != (2 if dims == "2d" else 3):
            raise InputError(f"memory benchmark: shape {sz['shape']} does not fit dims {dims!r}")
        for method in methods:
            if method not in iters:
                raise InputError(f"memory benchmark: no iteration list for method {method!r}")
            for k in iters[method]:
                r = measure_step_memory(method, int(k), shape=sz["shape"], dims=dims, coils=sz["coils"],
                                        channels=sz["channels"], layers=sz["layers"], batch=batch,
                                        acceleration=acceleration, device=device, seed=seed, threads=threads,
                                        model_kwargs={**(method_settings or {}).get(method, {}),
                                                      **(model_settings if method != "modl" else {}),
                                                      **_mol_kwargs(method, force_iters)}, timeout=timeout,
                                        repeats=repeats, allocated=allocated, penalty_backward=penalty_backward)
                row = {"method": method, "iters": int(k), "dims": dims, "shape": list(sz["shape"]),
                       "peak_mib": r["peak_bytes"] / MIB, "device": r["device"], "coils": sz["coils"],
                       "channels": sz["channels"], "layers": sz["layers"], "batch": batch,
                       "forward_iterations": r.get("forward_iterations"),
                       "backward_iterations": r.get("backward_iterations"),
                       "step_seconds": r.get("step_seconds"),
                       "phase_peaks_mib": {p: v / MIB for p, v in (r.get("phase_peaks_bytes") or {}).items()},
                       "measure": r.get("measure"),
                       "saved_mib": r["saved_bytes"] / MIB,
                       "saved_forward_mib": r["saved_forward_bytes"] / MIB,
                       "saved_peak_mib": r["saved_peak_bytes"] / MIB,
                       "saved_by_producer_mib": {k: v / MIB for k, v in r["saved_by_producer_bytes"].items()},
                       "penalty_backward": penalty_backward}
                if "saved_penalty_bytes" in r:
                    row["saved_penalty_mib"] = r["saved_penalty_bytes"] / MIB
                if "peaks" in r:
                    row["peaks_mib"] = [p / MIB for p in r["peaks"]]
                if "allocated_peak_bytes" in r:
                    row["allocated_mib"] = r["allocated_peak_bytes"] / MIB
                    row["allocated_phase_peaks_mib"] = {p: v / MIB for p, v in
                                                        r["allocated_phase_peaks_bytes"].items()}
                rows.append(row)
                if on_row is not None:
                    on_row(row, rows)
    return rows


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``y ≈ a + b x``; returns ``(a, b, R²)`` (R² = 1 for two points or a constant y)."""
    n = len(xs)
    if n < 2:
        raise InputError("linear fit needs at least two points")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise InputError("linear fit needs two different x values")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    return a, b, (1.0 - ss_res / ss_tot) if ss_tot > 0 else 1.0


def summarize_memory(rows: Sequence[dict], budget_gib: float = 16.0) -> list[dict]:
    r"""Per dims: MoDL's linear model and MOL's flatness, and the acceptance figures.

    MoDL: :math:`\text{peak}(K) \approx a + bK` fitted to the measured K; the K at which it exceeds the budget
    :math:`B` is :math:`K_B = \lceil (B - a)/b \rceil` (an extrapolation, labelled so). MOL: its peak over the
    measured ``max_iter`` (flat: the implicit backward stores one block), the ratio of the largest to the
    smallest max_iter's peak (acceptance: 50 vs 5 within 15 %) and of its largest peak to MoDL's at K=1
    (acceptance: ≤ ~1.5).
    """
    out = []
    budget_mib = budget_gib * 1024.0
    for dims in dict.fromkeys(r["dims"] for r in rows):
        sub = [r for r in rows if r["dims"] == dims]
        s: dict = {"dims": dims, "shape": sub[0]["shape"], "device": sub[0]["device"], "budget_gib": budget_gib}
        modl = sorted((r for r in sub if r["method"] == "modl"), key=lambda r: r["iters"])
        if len(modl) >= 2 and len({r["iters"] for r in modl}) >= 2:
            a, b, r2 = linear_fit([r["iters"] for r in modl], [r["peak_mib"] for r in modl])
            s.update(modl_intercept_mib=a, modl_slope_mib_per_iter=b, modl_fit_r2=r2)
            s["modl_k_exceeding_budget"] = (max(1, math.ceil((budget_mib - a) / b)) if b > 0 else None)
        k1 = next((r["peak_mib"] for r in modl if r["iters"] == 1), None)
        s["modl_k1_mib"] = k1
        exact = [m for m in ("saved", "allocated") if all(f"{m}_mib" in r for r in sub)]
        if "saved" in exact and len({r["iters"] for r in modl}) >= 2:
            a, b, r2 = linear_fit([r["iters"] for r in modl], [r["saved_mib"] for r in modl])
            s.update(modl_saved_intercept_mib=a, modl_saved_slope_mib_per_iter=b, modl_saved_fit_r2=r2)
        top = modl[-1] if modl else None
        if top is not None:
            s["modl_top_k"] = top["iters"]
        for method in FIXED_POINT_METHODS:
            mol = sorted((r for r in sub if r["method"] == method), key=lambda r: r["iters"])
            if not mol:
                continue
            peaks = [r["peak_mib"] for r in mol]
            s[f"{method}_max_mib"] = max(peaks)
            if len(mol) >= 2:
                s[f"{method}_last_over_first"] = peaks[-1] / peaks[0]
                s[f"{method}_iters_compared"] = [mol[0]["iters"], mol[-1]["iters"]]
            if k1:
                s[f"{method}_over_modl_k1"] = max(peaks) / k1
            if top is not None:
                s[f"modl_top_over_{method}_peak"] = top["peak_mib"] / max(peaks)
            for measure in exact:  # the exact measures, as the peak above
                values = [r[f"{measure}_mib"] for r in mol]
                s[f"{method}_{measure}_max_mib"] = max(values)
                if len(mol) >= 2:
                    s[f"{method}_{measure}_last_over_first"] = values[-1] / values[0]
                if top is not None:
                    s[f"modl_top_over_{method}_{measure}"] = top[f"{measure}_mib"] / max(values)
        out.append(s)
    return out


def memory_markdown(rows: Sequence[dict], summary: Sequence[dict]) -> str:
    """The markdown tables of ``memory.md``: peak MiB per (dims, method, iterations), and the summary."""
    iters = sorted({r["iters"] for r in rows})
    table_rows = []
    for dims in dict.fromkeys(r["dims"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["dims"] == dims):
            sub = {r["iters"]: r for r in rows if r["dims"] == dims and r["method"] == method}
            any_r = next(iter(sub.values()))
            row = {"dims": dims, "shape × coils": "×".join(map(str, any_r["shape"])) + f" × {any_r.get('coils', '?')}c",
                   "method": method}
            for k in iters:
                row[str(k)] = f"{sub[k]['peak_mib']:.0f}" if k in sub else ""
            table_rows.append(row)
    lines = ["Peak memory (MiB) of one training step vs iterations (MoDL: unrolled K; MOL: forward max_iter)\n",
             markdown_table(table_rows, ["dims", "shape × coils", "method", *map(str, iters)])]
    exact_tables = (("saved_mib", "Saved for backward (MiB, exact: storages autograd keeps after forward + loss, "
                                  "deduplicated)"),
                    ("allocated_mib", "Peak allocated (MiB, exact: the most tensor memory live at once during the "
                                      "step)"))
    for key, title in exact_tables:
        if not rows or not all(key in r for r in rows):
            continue
        exact_rows = []
        for row in table_rows:
            sub = {r["iters"]: r for r in rows if r["dims"] == row["dims"] and r["method"] == row["method"]}
            exact_rows.append({**{k: row[k] for k in ("dims", "shape × coils", "method")},
                               **{str(k): f"{sub[k][key]:.1f}" if k in sub else "" for k in iters}})
        lines += [f"\n{title}\n", markdown_table(exact_rows, ["dims", "shape × coils", "method", *map(str, iters)])]
    srows: list[dict] = []
    ratios: list[dict] = []
    for s in summary:
        k_b = s.get("modl_k_exceeding_budget")
        srows.append({
            "dims": s["dims"],
            "MoDL slope (MiB/iter)": "" if "modl_slope_mib_per_iter" not in s else
            f"{s['modl_slope_mib_per_iter']:.1f} (R² {s['modl_fit_r2']:.3f})",
            "MoDL K=1 (MiB)": "" if s.get("modl_k1_mib") is None else f"{s['modl_k1_mib']:.0f}",
            f"MoDL K > {s['budget_gib']:g} GiB (extrapolated)": "" if k_b is None else str(k_b),
            "MOL-LR max (MiB)": f"{s['mol-lr_max_mib']:.0f}" if "mol-lr_max_mib" in s else "",
            "MOL-LR last/first": f"{s['mol-lr_last_over_first']:.3f}" if "mol-lr_last_over_first" in s else "",
            "MOL-LR / MoDL K=1": f"{s['mol-lr_over_modl_k1']:.2f}" if "mol-lr_over_modl_k1" in s else "",
            "MOL-SN max (MiB)": f"{s['mol-sn_max_mib']:.0f}" if "mol-sn_max_mib" in s else "",
            "MOL-SN last/first": f"{s['mol-sn_last_over_first']:.3f}" if "mol-sn_last_over_first" in s else "",
            "MOL-SN / MoDL K=1": f"{s['mol-sn_over_modl_k1']:.2f}" if "mol-sn_over_modl_k1" in s else "",
        })
        top = s.get("modl_top_k")
        for method in FIXED_POINT_METHODS:
            if top is None or f"modl_top_over_{method}_peak" not in s:
                continue
            ratios.append({"dims": s["dims"], "ratio": f"MoDL K={top} / {method}",
                           "peak": f"{s[f'modl_top_over_{method}_peak']:.1f}×",
                           "allocated": (f"{s[f'modl_top_over_{method}_allocated']:.1f}×"
                                         if f"modl_top_over_{method}_allocated" in s else ""),
                           "saved": (f"{s[f'modl_top_over_{method}_saved']:.1f}×"
                                     if f"modl_top_over_{method}_saved" in s else ""),
                           f"{method} saved last/first": (f"{s[f'{method}_saved_last_over_first']:.3f}"
                                                          if f"{method}_saved_last_over_first" in s else "")})
    if srows:
        lines += ["\nSummary (acceptance: MOL last/first ≤ 1.15, MOL / MoDL K=1 ≤ ~1.5; MoDL linear in K)\n",
                  markdown_table(srows, list(srows[0]))]
    if ratios:
        cols = list(dict.fromkeys(k for r in ratios for k in r))
        lines += ["\nMoDL (largest K) over MOL (largest max_iter), by peak RSS, peak allocated and saved bytes; MOL "
                  "flatness by saved bytes (acceptance: ≥ 10× at 2D 256² × 12 coils × 64 channels; last/first "
                  "within 5 %)\n",
                  markdown_table([{c: r.get(c, "") for c in cols} for r in ratios], cols)]
    return "\n".join(lines)
