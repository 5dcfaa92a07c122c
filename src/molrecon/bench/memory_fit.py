"""The largest 3D volume on which one training step fits on the device: ``molrecon bench fit``.

For each method and each cubic size N³ (ascending), one training step (forward, loss, backward, Adam step; the
step of :func:`~molrecon.bench.memory.measure_step_memory`) runs in a fresh process. The first size at which a
method's step runs out of memory ends that method's sizes: larger ones would fail too. The summary names the
first size at which MoDL no longer fits while a MOL method still trains, which is the point of MOL's memory
that does not grow with the iterations. On CUDA "out of memory" is the card's; on CPU it is the machine's (or a
process killed by the kernel), so a CPU run answers for that machine only.

Example
-------
>>> rows = run_fit_sweep(["modl", "mol-sn"], [8, 12], iters={"modl": 2, "mol-sn": 2}, coils=2, channels=4,
...                      layers=2)
>>> [(r["method"], r["size"], r["fits"]) for r in rows]
[('modl', 8, True), ('modl', 12, True), ('mol-sn', 8, True), ('mol-sn', 12, True)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InputError
from ..evaluate.report import markdown_table
from .memory import StepOutOfMemory, measure_step_memory
from .memory_sweep import MIB

#: cubic sizes tried by default, up to where an 80 GiB card is expected to run out for MoDL K = 10 with the 5 × 16
#: 3-D CNN (an estimate from the CPU peaks, not a measurement)
DEFAULT_FIT_SIZES = (64, 96, 128, 160, 192, 224, 256)


def run_fit_sweep(methods: Sequence[str], sizes: Sequence[int], iters: dict[str, int], coils: int = 8,
                  channels: int = 16, layers: int = 5, device: str = "cpu", threads: int = 1,
                  timeout: float = 600.0, model_settings: dict[str, Any] | None = None,
                  penalty_backward: str = "after_data", measure: Callable[..., dict] = measure_step_memory,
                  on_row: Callable[[dict, list[dict]], None] | None = None,
                  method_settings: dict[str, dict[str, Any]] | None = None) -> list[dict]:
    """One row per (method, size) tried: ``{"method", "iters", "size", "shape", "fits", "peak_mib" | "error"}``.

    ``iters``: MoDL's unrolled ``K``, MOL's forward ``max_iter`` (run in full: ``tol`` 1e-12), per method.
    ``model_settings``: model keys of every method but MoDL; ``method_settings``: model keys per method, under
    ``model_settings`` (a shipped recipe's, :func:`molrecon.bench.recipes.recipe_settings`).
    ``penalty_backward``: MOL-LR's penalty backward (``"after_data"``, as its configs train, or ``"joint"``). A
    step that fails for another reason than memory raises: that is a bug, not a size.
    """
    if not methods or not sizes:
        raise InputError("bench fit: need at least one method and one size")
    if any(int(n) < 4 for n in sizes):
        raise InputError(f"bench fit: sizes must be >= 4, got {list(sizes)}")
    missing = [m for m in methods if m not in iters]
    if missing:
        raise InputError(f"bench fit: no iteration count for {missing}")
    rows: list[dict] = []
    for method in methods:
        kwargs = {**(method_settings or {}).get(method, {})}
        if method != "modl":
            kwargs.update({**(model_settings or {}), "tol": 1e-12})
        for n in sorted(int(s) for s in sizes):
            row = {"method": method, "iters": int(iters[method]), "size": n, "shape": [n, n, n],
                   "coils": coils, "channels": channels, "layers": layers, "device": device}
            try:
                r = measure(method, int(iters[method]), shape=(n, n, n), dims="3d", coils=coils,
                            channels=channels, layers=layers, device=device, threads=threads,
                            model_kwargs=kwargs, timeout=timeout, penalty_backward=penalty_backward)
            except StepOutOfMemory as exc:
                rows.append({**row, "fits": False, "error": str(exc)})
            else:
                rows.append({**row, "fits": True, "peak_mib": r["peak_bytes"] / MIB,
                             "step_seconds": r.get("step_seconds")})
            if on_row is not None:
                on_row(rows[-1], rows)
            if not rows[-1]["fits"]:
                break
    return rows


def summarize_fit(rows: Sequence[dict]) -> dict:
    """Per method the largest size that fit and the first that did not; and ``modl_out_mol_in``: the first size
    at which MoDL did not fit while a MOL method did (``None`` when the sizes tried do not show one)."""
    largest: dict[str, int | None] = {}
    first_failure: dict[str, int | None] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        own = [r for r in rows if r["method"] == method]
        fits = [r["size"] for r in own if r["fits"]]
        fails = [r["size"] for r in own if not r["fits"]]
        largest[method] = max(fits) if fits else None
        first_failure[method] = min(fails) if fails else None
    crossing = None
    if first_failure.get("modl") is not None:
        n = first_failure["modl"]
        if any(r["size"] == n and r["fits"] for r in rows if r["method"] != "modl"):
            crossing = n
    return {"largest_fit": largest, "first_failure": first_failure, "modl_out_mol_in": crossing}


def fit_markdown(rows: Sequence[dict], summary: dict) -> str:
    """``fit.md``: peak MiB (or "out of memory") per method and size, and the summary line."""
    sizes = sorted({r["size"] for r in rows})
    table = []
    for method in dict.fromkeys(r["method"] for r in rows):
        own = {r["size"]: r for r in rows if r["method"] == method}
        any_r = next(iter(own.values()))
        entry = {"method": method, "iterations": str(any_r["iters"])}
        for n in sizes:
            r = own.get(n)
            entry[f"{n}³"] = "" if r is None else (f"{r['peak_mib']:.0f}" if r["fits"] else "out of memory")
        table.append(entry)
    any_r = rows[0] if rows else {}
    lines = [f"Peak memory (MiB) of one 3D training step on {any_r.get('device', '?')}, "
             f"{any_r.get('coils', '?')} coils, CNN {any_r.get('layers', '?')} × {any_r.get('channels', '?')}\n",
             markdown_table(table, ["method", "iterations", *[f"{n}³" for n in sizes]])]
    n = summary["modl_out_mol_in"]
    lines.append("\n" + (f"MoDL no longer fits at {n}³, where MOL still trains." if n is not None else
                         "The sizes tried do not show a size at which MoDL fails and MOL fits."))
    return "\n".join(lines)


__all__ = ["DEFAULT_FIT_SIZES", "run_fit_sweep", "summarize_fit", "fit_markdown"]
