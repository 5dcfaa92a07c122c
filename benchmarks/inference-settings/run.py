"""Time per 2D test slice and PSNR of shipped MOL models at several (start, block) CG settings, each run timed
right after MoDL K = 10 on the same slice, so that a changing machine load falls on both alike.

    OMP_NUM_THREADS=1 python benchmarks/inference-settings/run.py mol-lr-2d-4x,mol-sn-2d-4x 16 OUT.json [10/10,...]

A setting is (CG steps of the CG-SENSE start, CG steps per block); the fixed point is the same at every setting.
The optional fourth argument picks settings (``START/BLOCK``, ``START/BLOCK/TOL`` or ``START/BLOCK/TOL/FORCING``,
comma-separated) instead of all of ``SETTINGS``; ``TOL`` overrides the forward tolerance (relative change), which
moves the answer within the solver's error bound (``-``: the model's); ``FORCING`` sets ``cg_forcing`` (each
block's CG stops at that fraction of its warm start's residual; the fixed point is the same; ``off`` or 0: none,
whatever the model ships).
PSNR: the magnitude inside the object (fastMRI style), per slice against the slice's own maximum, averaged.
``normal_calls_mean``: applications of ``A^H A`` per slice (CG-SENSE start, blocks and the exact last block), a
count of the work that the machine's load does not move.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from _slices import builtin_slices  # noqa: E402

from molrecon.io import machine_info  # noqa: E402
from molrecon.metrics import object_support, psnr  # noqa: E402
from molrecon.weights.loading import resolve_model  # noqa: E402

SETTINGS = [(50, 15), (10, 15), (10, 10), (50, 10), (10, 8)]


def _setting(text: str) -> tuple:
    """``START/BLOCK[/TOL[/FORCING]]`` → ``(start, block)``, ``(start, block, tol)`` or ``(start, block, tol,
    forcing)``; a ``tol`` of ``-`` is the model's (``None``)."""
    parts = text.split("/")
    return tuple(int(v) for v in parts[:2]) + tuple(
        None if v == "-" else 0.0 if v == "off" else float(v) for v in parts[2:4])


def _timed(fn):
    """``fn()`` and its wall time, without gradients: MOL's solve runs under ``no_grad`` itself, and MoDL timed
    with autograd on would pay for a graph that inference never uses (~20 % of its time at 128²)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    names, count, out_path = sys.argv[1].split(","), int(sys.argv[2]), Path(sys.argv[3])
    settings = SETTINGS if len(sys.argv) < 5 else list(dict.fromkeys(_setting(s) for s in sys.argv[4].split(",")))
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    modl = resolve_model("modl-2d-4x").model.eval()
    models = {n: resolve_model(n).model.eval() for n in names}
    model_tol = {n: float(m.tol) for n, m in models.items()}
    model_forcing = {n: m.cg_forcing for n, m in models.items()}
    keys = [(n, s) for n in names for s in settings]
    seconds = dict.fromkeys(keys, 0.0)
    scores: dict = {k: [] for k in keys}
    iterations: dict = {k: [] for k in keys}
    normal_calls: dict = {k: [] for k in keys}
    modl_seconds, modl_scores = 0.0, []
    for _, batch, physics in builtin_slices("2d", count):
        target = batch["target"][0].numpy()
        support, peak = object_support(target), float(np.abs(target).max())
        y = (physics.sampling_weights() * batch["kspace"]).to(torch.complex64)
        # untimed: the first solve on a new operator ran up to ~25 % slower than the ones after it (measured, cause
        # not traced), which would otherwise fall on whichever setting comes first
        _timed(lambda y=y, p=physics: modl(y, p))
        _timed(lambda y=y, p=physics: models[names[0]].solve(y, p))
        for k, (name, setting) in enumerate(keys):
            x, t = _timed(lambda y=y, p=physics: modl(y, p))
            modl_seconds += t
            if k == 0:
                modl_scores.append(psnr(x[0].numpy(), target, peak, support))
            model = models[name]
            model.init_cg_iter = setting[0]
            overrides = {"cg_iter": setting[1], **dict(zip(("tol", "cg_forcing"), setting[2:]))}
            calls = [0]
            normal = physics.normal

            def counted(v, normal=normal, calls=calls):
                calls[0] += 1
                return normal(v)

            physics.normal = counted
            (x, info), t = _timed(lambda m=model, o=overrides, y=y, p=physics: m.solve(y, p, **o))
            physics.normal = normal
            normal_calls[(name, setting)].append(calls[0])
            seconds[(name, setting)] += t
            scores[(name, setting)].append(psnr(x[0].numpy(), target, peak, support))
            iterations[(name, setting)].append(int(info.iterations[0]))
    n = len(modl_scores)
    modl_per_slice = modl_seconds / len(keys) / n
    rows = [{"model": "modl-2d-4x", "seconds_per_slice": modl_per_slice, "psnr": float(np.mean(modl_scores))}]
    print(f"modl-2d-4x: {modl_per_slice:.3f} s/slice, PSNR {np.mean(modl_scores):.3f} dB")
    for (name, setting) in keys:
        per_slice = seconds[(name, setting)] / n
        row = {"model": name, "init_cg_iter": setting[0], "cg_iter": setting[1], "seconds_per_slice": per_slice,
               "tol": setting[2] if len(setting) > 2 and setting[2] is not None else model_tol[name],
               "cg_forcing": setting[3] if len(setting) > 3 and setting[3] is not None else model_forcing[name],
               "ratio_to_modl": per_slice / modl_per_slice, "psnr": float(np.mean(scores[(name, setting)])),
               "iterations_mean": float(np.mean(iterations[(name, setting)])),
               "iterations_max": int(max(iterations[(name, setting)])),
               "normal_calls_mean": float(np.mean(normal_calls[(name, setting)]))}
        rows.append(row)
        print(f"{name} start {setting[0]:2d} / block {setting[1]:2d} CG steps, tol {row['tol']:.0e}, "
              f"forcing {row['cg_forcing']}: "
              f"{per_slice:.3f} s/slice ({row['ratio_to_modl']:.2f}x MoDL), PSNR {row['psnr']:.4f} dB, "
              f"{row['iterations_mean']:.1f} iterations (max {row['iterations_max']}), "
              f"{row['normal_calls_mean']:.1f} A^H A")
    out_path.write_text(json.dumps({"slices": n, "threads": 1, "machine": machine_info(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
