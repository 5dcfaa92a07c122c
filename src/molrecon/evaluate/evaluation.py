r"""Evaluate reconstruction methods, classical and learned, over a dataset, as fastMRI does.

For every volume ``v`` (the slices of one file) and method ``m`` the slices are reconstructed, stacked and
scored on the magnitude inside the object support :math:`\Omega` (:func:`~molrecon.metrics.object_support`,
computed per slice from the target):

.. math::
    \mathrm{PSNR}_v = 10\log_{10}\frac{R_v^2}{\operatorname{mean}\big((|x|-|t|)^2\,1_\Omega\big)},\qquad
    R_v = \max_v |t|,\qquad
    \mathrm{NMSE}_v = \frac{\|(|x|-|t|)1_\Omega\|^2}{\|\,|t|1_\Omega\|^2},

and SSIM with a 7×7 window and the same data range :math:`R_v`, averaged over the slices of the volume.
The report gives, per method, the mean over volumes and the spread (sample standard deviation, ``ddof=1``;
0 for a single volume), the iterations the solver needed (``model.last_info`` for MOL/DEQ, ``None`` for
methods that do not report them) and the wall time per slice. ``average_over="slices"`` instead averages the
per-slice scores (still with the volume's data range); the demo uses it, as its figures are means over the
test slices.

Methods are given as names: classical ones (``zero-filled``, ``sense``, ``cs-wavelet``, ``cs-tv``) run
:func:`molrecon.recon.reconstruct`; learned ones are training checkpoints or pretrained names, resolved by
:func:`molrecon.weights.loading.resolve_model` (never unpickling code). The runners and the one way to run
any method are in :mod:`molrecon.evaluate.methods`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.builtin import builtin_dataset
from ..data.slice_dataset import SliceDataset, collate, physics_from_batch
from ..errors import InputError
from ..io import machine_info, write_json_atomic, write_text_atomic
from ..metrics import PSNR_OBJECT_SUPPORT, evaluate_volume, nmse, object_support, psnr
from ..names import DIMS_OF_KIND
from ..physics import mask_for
from .figures import comparison_grid
from .methods import MethodRunner, classical_runner, model_runner, resolve_methods
from .report import markdown_table

__all__ = ["MethodRunner", "classical_runner", "model_runner", "resolve_methods", "load_dataset", "iter_volumes",
           "evaluate", "summary_rows", "write_report", "SUMMARY_COLUMNS"]

# --------------------------------------------------------------------------------------------------------
# data


def load_dataset(data: str | Path | None, kind: str = "2d", split: str = "test",
                 acceleration: float | None = None, center_fraction: float | None = None) -> Any:
    """The dataset to evaluate: ``None``/``"builtin"`` → the built-in ``split`` (built if absent); a folder →
    :class:`molrecon.data.SliceDataset` over its HDF5 files.

    Without ``acceleration`` the files' stored masks are used; with it, a seeded fastMRI-style mask at that
    acceleration (:func:`molrecon.physics.mask_for`) replaces them.
    """

    mask_func = None
    if acceleration is not None:
        mask_func = mask_for(DIMS_OF_KIND.get(kind, kind), acceleration, center_fraction)
    if data is None or str(data) == "builtin":
        return builtin_dataset(kind, split, None, mask_func=mask_func)
    path = Path(data)
    if not path.exists():
        raise InputError(f"{path}: data folder not found")
    return SliceDataset(path, mask_func=mask_func)


def iter_volumes(dataset: Any, max_volumes: int | None = None,
                 max_slices: int | None = None) -> Iterable[tuple[str, list[dict]]]:
    """Group consecutive dataset items by ``fname``: yields ``(fname, items)`` per volume."""
    current, items, n_vol, n_items = None, [], 0, 0
    for i in range(len(dataset)):
        if max_slices is not None and n_items >= max_slices:
            break
        item = dataset[i]
        fname = str(item.get("fname", i))
        if current is not None and fname != current:
            yield current, items
            n_vol += 1
            items = []
            if max_volumes is not None and n_vol >= max_volumes:
                return
        current = fname
        items.append(item)
        n_items += 1
    if items:
        yield current, items


# --------------------------------------------------------------------------------------------------------
# evaluation


def _middle_2d(a: np.ndarray) -> np.ndarray:
    """A 2D image of an item: itself (2D) or its middle partition/frame (3D, 2D+t)."""
    while a.ndim > 2:
        a = a[a.shape[0] // 2]
    return a


def _stats(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def evaluate(runners: Sequence[MethodRunner], dataset: Any, batch_size: int = 4, device: str = "cpu",
             max_volumes: int | None = None, max_slices: int | None = None, average_over: str = "volumes",
             progress: bool = True) -> dict[str, Any]:
    """Run every method over ``dataset`` and score it (see the module docstring for the metrics).

    Returns ``{"methods": {name: summary}, "volumes": [...per-volume, per-method scores...],
    "slices": [...], "example": {...images of one slice for the figure...}, "settings": {...}}``.
    """
    if average_over not in ("volumes", "slices"):
        raise InputError(f"average_over must be 'volumes' or 'slices', got {average_over!r}")
    per_volume: list[dict[str, Any]] = []
    per_slice: list[dict[str, Any]] = []
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    iters: dict[str, list[int]] = {r.name: [] for r in runners}
    converged: dict[str, list[bool]] = {r.name: [] for r in runners}
    example: dict[str, Any] | None = None
    for fname, items in iter_volumes(dataset, max_volumes, max_slices):
        targets = np.stack([np.asarray(it["target"]) for it in items])
        supports = np.stack([object_support(t) for t in targets])
        data_range = float(np.abs(targets).max())
        vol_record: dict[str, Any] = {"fname": fname, "num_slices": len(items), "data_range": data_range,
                                      "metrics": {}}
        slice_records = [{"fname": fname, "slice": int(it.get("slice", k)), "metrics": {}}
                         for k, it in enumerate(items)]
        ex_index = len(items) // 2
        if example is None:
            example = {"fname": fname, "slice": slice_records[ex_index]["slice"],
                       "target": np.abs(_middle_2d(targets[ex_index])), "support": _middle_2d(supports[ex_index]),
                       "data_range": data_range, "images": {}, "metrics": {}}
        for r in runners:
            preds = []
            for start in range(0, len(items), batch_size):
                batch = collate(items[start:start + batch_size])
                physics = physics_from_batch(batch).to(device)
                y = (physics.sampling_weights() * batch["kspace"].to(device)).to(torch.complex64)
                t0 = time.perf_counter()
                x, solver = r.fn(y, physics)
                elapsed = time.perf_counter() - t0
                if not torch.isfinite(torch.view_as_real(x)).all():
                    raise InputError(f"{r.name} produced NaN/Inf on {fname}")
                n = y.shape[0]
                times[r.name].extend([elapsed / n] * n)
                iters[r.name].extend(solver["iterations"] or [])
                converged[r.name].extend(solver["converged"] or [])
                preds.append(x.detach().cpu().numpy())
            pred = np.concatenate(preds)
            vol_scores = {"psnr": psnr(pred, targets, data_range, supports),
                          "nmse": nmse(pred, targets, supports)}
            slice_ssim = []
            for k in range(len(items)):
                s = evaluate_volume(pred[k], targets[k], data_range, supports[k])
                slice_records[k]["metrics"][r.name] = s
                slice_ssim.append(s["ssim"])
            vol_scores["ssim"] = float(np.mean(slice_ssim))
            vol_record["metrics"][r.name] = vol_scores
            if example["fname"] == fname:
                example["images"][r.name] = np.abs(_middle_2d(pred[ex_index]))
                example["metrics"][r.name] = slice_records[ex_index]["metrics"][r.name]
        per_volume.append(vol_record)
        per_slice.extend(slice_records)
        if progress:
            scores = "  ".join(f"{n}: {vol_record['metrics'][n]['psnr']:.2f} dB" for n in vol_record["metrics"])
            print(f"  {fname} ({len(items)} slices)  {scores}", flush=True)
    if not per_volume:
        raise InputError("the dataset holds no slice to evaluate")
    units = per_volume if average_over == "volumes" else per_slice
    summary: dict[str, dict[str, Any]] = {}
    for r in runners:
        s: dict[str, Any] = {"method": r.method, "source": r.source}
        for key in ("psnr", "ssim", "nmse"):
            mean, std = _stats([u["metrics"][r.name][key] for u in units])
            s[key], s[f"{key}_std"] = mean, std
        s["iterations"] = float(np.mean(iters[r.name])) if iters[r.name] else None
        s["iterations_max"] = int(max(iters[r.name])) if iters[r.name] else None
        s["converged_fraction"] = float(np.mean(converged[r.name])) if converged[r.name] else None
        s["time_per_slice_s"] = float(np.mean(times[r.name]))
        s["num_volumes"] = len(per_volume)
        s["num_slices"] = len(per_slice)
        s.update({k: v for k, v in r.meta.items() if k != "params"})
        if "params" in r.meta:
            s["params"] = r.meta["params"]
        summary[r.name] = s
    return {
        "methods": summary,
        "volumes": per_volume,
        "slices": per_slice,
        "example": example,
        "settings": {"psnr_definition": PSNR_OBJECT_SUPPORT, "average_over": average_over, "batch_size": batch_size,
                     "device": device,
                     "metric": "fastMRI-style on magnitude inside the object support; data_range = volume max; "
                               "SSIM 7x7"},
    }


SUMMARY_COLUMNS = ["method", "PSNR (dB)", "SSIM", "NMSE", "iterations", "time/slice (s)"]


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for :func:`~molrecon.evaluate.report.markdown_table`: ``mean ± std`` per metric."""
    rows = []
    for name, s in results["methods"].items():
        rows.append({
            "method": name,
            "PSNR (dB)": f"{s['psnr']:.2f} ± {s['psnr_std']:.2f}",
            "SSIM": f"{s['ssim']:.4f} ± {s['ssim_std']:.4f}",
            "NMSE": f"{s['nmse']:.4g} ± {s['nmse_std']:.2g}",
            "iterations": "-" if s["iterations"] is None else f"{s['iterations']:.1f}",
            "time/slice (s)": f"{s['time_per_slice_s']:.3f}",
        })
    return rows


def write_report(results: dict[str, Any], out_dir: str | Path, title: str = "molrecon evaluation",
                 data_description: str = "", extra: dict[str, Any] | None = None,
                 json_name: str = "report.json") -> dict[str, Path]:
    """Write ``out_dir/<json_name>`` (summary, per-volume and per-slice scores, machine info),
    ``report.md`` (table) and ``figure.png`` (grid of the example slice), each atomically."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / json_name, "markdown": out / "report.md", "figure": out / "figure.png"}
    ex = results["example"]
    comparison_grid(ex["target"], ex["images"], paths["figure"], metrics=ex["metrics"],
                    data_range=ex["data_range"], support=ex["support"],
                    title=f"{title}: {ex['fname']} slice {ex['slice']}")
    payload = {
        "title": title,
        "data": data_description,
        "methods": results["methods"],
        "settings": results["settings"],
        "volumes": results["volumes"],
        "slices": results["slices"],
        "figure": paths["figure"].name,
        "machine": machine_info(),
    }
    payload.update(extra or {})
    write_json_atomic(paths["json"], payload)
    avg = results["settings"]["average_over"]
    n_vol = len(results["volumes"])
    n_sl = len(results["slices"])
    md = [f"# {title}\n", f"Data: {data_description}\n" if data_description else "",
          f"{n_vol} volume(s), {n_sl} slice(s); mean ± std over {avg}. Metrics on the magnitude inside the object "
          "support, data range = target volume maximum, SSIM 7×7 (fastMRI).\n",
          markdown_table(summary_rows(results), SUMMARY_COLUMNS)]
    notes = (extra or {}).get("notes")
    if notes:
        md.append("\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    md.append(f"\n![comparison]({paths['figure'].name})\n")
    write_text_atomic(paths["markdown"], "\n".join(s for s in md if s))
    return paths
