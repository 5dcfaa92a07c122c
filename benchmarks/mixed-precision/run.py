"""Does MOL's fixed point survive a CNN run in reduced precision? (CPU autocast as a stand-in for GPU AMP.)

For each shipped 2D model and each CNN precision (float32, bfloat16, float16 under ``torch.autocast`` on the
CPU), reconstruct the first built-in test slices at the shipped settings and report the forward iterations,
whether the forward met its tolerance, the relative distance to the float32 answer and the test PSNR. The
k-space, the DC solves (CG, complex64) and the iteration itself stay in full precision: autocast only changes
the real-valued convolutions of H.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mixed-precision/run.py benchmarks/mixed-precision/precision.json
"""

from __future__ import annotations

import json
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

import molrecon
from molrecon.data import builtin_test_example
from molrecon.metrics import object_support, psnr

MODELS = ("mol-lr-2d-4x", "mol-sn-2d-4x", "modl-2d-4x")
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
SLICES = 4


def reconstruct(model, y, physics, dtype):
    """The answer with the CNN under autocast ``dtype`` (None: float32); iterations, converged, best relative change."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an unconverged forward is recorded, not warned
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            if hasattr(model, "solve"):
                x, info = model.solve(y, physics)
                return x, int(info.iterations[0]), bool(info.converged[0]), float(info.extra["best_residual"][0])
            return model(y, physics), None, None, None


def main(out: str) -> int:
    rows = []
    for name in MODELS:
        model = molrecon.load_pretrained(name).eval()
        for i in range(SLICES):
            y, physics, target = builtin_test_example(i)
            support = object_support(target[0])
            dr = float(target.abs().max())
            ref = None
            for label, dtype in PRECISIONS.items():
                t0 = time.perf_counter()
                x, iters, conv, res = reconstruct(model, y, physics, dtype)
                dt = time.perf_counter() - t0
                x = x.to(torch.complex64)
                if ref is None:
                    ref = x
                rel = float((x - ref).abs().norm() / ref.abs().norm())
                rows.append({"model": name, "slice": i, "precision": label, "iterations": iters, "converged": conv,
                             "best_relative_change": res,
                             "rel_diff_to_float32": rel, "psnr": float(psnr(x[0], target[0], dr, support)),
                             "seconds": dt})
                print(json.dumps(rows[-1]), flush=True)
    result = {"machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__},
              "slices": SLICES, "rows": rows}
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "precision.json"))
