"""PSNR/SSIM table of every method (classical and learned) at several accelerations on the built-in test set.

A thin layer over :mod:`molrecon.evaluate.evaluation` (same metrics, same data loading, same runners): for each
acceleration ``a`` the test split is loaded with a seeded fastMRI-style mask at ``a`` (``center_fraction``
0.08 at 4×, 0.04 at 8×), every method is evaluated, and the per-acceleration report (JSON, markdown, comparison
figure) is written to ``OUT/<a>x/``. Learned methods are the shipped pretrained models
``<method>-<dims>-<a>x``; when only the 4× model is shipped it is applied at ``a`` and labelled so; when none is
shipped the method is skipped with a note (never silently).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.builtin import normalize_kind
from ..errors import InputError
from ..evaluate.evaluation import evaluate, load_dataset, resolve_methods, write_report
from ..evaluate.report import markdown_table
from ..names import CLASSICAL_METHODS, DIMS_OF_KIND, LEARNED_METHODS
from ..weights.pretrained import available_names, pretrained_name


def pretrained_for(method: str, kind: str, acceleration: float, shipped: set[str]) -> tuple[str | None, str]:
    """The pretrained name to use for ``method`` at ``acceleration`` and a note (empty when exact)."""
    dims = DIMS_OF_KIND[kind]
    exact = pretrained_name(method, dims, acceleration)
    if exact in shipped:
        return exact, ""
    fallback = pretrained_name(method, dims)
    if fallback in shipped:
        return fallback, f"{method} at {acceleration:g}×: {exact} not shipped, used {fallback} (trained at 4×)"
    tried = exact if exact == fallback else f"{exact} (nor {fallback})"
    return None, f"{method} at {acceleration:g}×: no pretrained {tried} shipped yet — skipped"


def run_quality_bench(accels: Sequence[float], classical: Sequence[str], learned: Sequence[str],
                      checkpoints: Sequence[str | Path] = (), kind: str = "2d", out: str | Path | None = None,
                      max_volumes: int | None = None, max_slices: int | None = None, batch_size: int = 4,
                      device: str = "cpu") -> dict[str, Any]:
    """Evaluate all methods at every acceleration; returns ``{"rows": [...], "notes": [...], ...}`` with one
    row per (method, acceleration): ``psnr``, ``psnr_std``, ``ssim``, ``ssim_std``, ``nmse``, iterations,
    time per slice, source."""

    kind = normalize_kind(kind)
    if not accels:
        raise InputError("bench quality: give at least one acceleration")
    for m in classical:
        if m not in CLASSICAL_METHODS:
            raise InputError(f"bench quality: unknown classical method {m!r} ({', '.join(CLASSICAL_METHODS)})")
    for m in learned:
        if m not in LEARNED_METHODS:
            raise InputError(f"bench quality: unknown learned method {m!r} ({', '.join(LEARNED_METHODS)})")
    shipped = set(available_names())
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    per_accel: dict[str, Any] = {}
    for a in accels:
        names = []
        for m in learned:
            name, note = pretrained_for(m, kind, float(a), shipped)
            if note and note not in notes:
                notes.append(note)
            if name:
                names.append(name)
        runners = resolve_methods(list(classical), list(checkpoints), names, device=device)
        dataset = load_dataset(None, kind=kind, split="test", acceleration=float(a))
        desc = f"built-in {kind} test split at {a:g}× (k-space simulated from images)"
        print(f"{a:g}×: {', '.join(r.name for r in runners)} on {desc}", flush=True)
        res = evaluate(runners, dataset, batch_size=batch_size, device=device, max_volumes=max_volumes,
                       max_slices=max_slices)
        if out is not None:
            write_report(res, Path(out) / f"{a:g}x", title=f"molrecon bench quality {a:g}x", data_description=desc)
        for name, s in res["methods"].items():
            rows.append({"method": name, "acceleration": float(a), "source": s["source"],
                         **{k: s[k] for k in ("psnr", "psnr_std", "ssim", "ssim_std", "nmse", "nmse_std",
                                              "iterations", "time_per_slice_s", "num_volumes", "num_slices")}})
        per_accel[f"{a:g}x"] = {"data": desc, "settings": res["settings"]}
    return {"kind": kind, "rows": rows, "notes": notes, "accelerations": [float(a) for a in accels],
            "per_acceleration": per_accel,
            "data": f"built-in {kind} test split (simulated k-space: optimistic, not comparable with raw fastMRI)"}


def quality_markdown(results: dict[str, Any]) -> str:
    """``quality.md``: PSNR and SSIM (mean ± std over volumes) per method, one column pair per acceleration."""

    accels = results["accelerations"]
    methods = list(dict.fromkeys(r["method"] for r in results["rows"]))
    table = []
    for m in methods:
        row: dict[str, Any] = {"method": m}
        for a in accels:
            r = next((r for r in results["rows"] if r["method"] == m and r["acceleration"] == a), None)
            row[f"PSNR {a:g}×"] = "" if r is None else f"{r['psnr']:.2f} ± {r['psnr_std']:.2f}"
            row[f"SSIM {a:g}×"] = "" if r is None else f"{r['ssim']:.4f} ± {r['ssim_std']:.4f}"
        table.append(row)
    cols = ["method"] + [c for a in accels for c in (f"PSNR {a:g}×", f"SSIM {a:g}×")]
    n = results["rows"][0] if results["rows"] else {}
    lines = [f"PSNR (dB) / SSIM on the {results['data']}; {n.get('num_volumes', '?')} volume(s), "
             f"{n.get('num_slices', '?')} slice(s); mean ± std over volumes; fastMRI metrics inside the object "
             "support.\n", markdown_table(table, cols)]
    if results.get("notes"):
        lines.append("\n" + "\n".join(f"- {x}" for x in results["notes"]) + "\n")
    return "\n".join(lines)
