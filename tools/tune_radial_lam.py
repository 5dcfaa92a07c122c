"""Tune the classical methods' ``lam`` on the built-in radial VALIDATION split (the weight for the unit-norm
operator A/‖A‖, see ``molrecon.recon``): mean PSNR over a few slices, true maps, the default spokes.

    OMP_NUM_THREADS=1 .venv/bin/python tools/tune_radial_lam.py --items 4
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from molrecon.data import physics_from_batch
from molrecon.data.builtin import builtin_dataset
from molrecon.metrics import psnr
from molrecon.recon import reconstruct

GRIDS = {"sense": [3e-4, 1e-3, 3e-3, 1e-2], "cs-wavelet": [3e-5, 1e-4, 3e-4, 1e-3], "cs-tv": [3e-3, 1e-2, 3e-2]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=4)
    ap.add_argument("--methods", nargs="+", default=list(GRIDS))
    ap.add_argument("--lams", type=float, nargs="+", default=None, help="the grid (default: GRIDS[method])")
    args = ap.parse_args()
    ds = builtin_dataset("radial", "val")
    step = max(1, len(ds) // args.items)
    picks = list(range(0, len(ds), step))[:args.items]
    results = {}
    for method in args.methods:
        for lam in args.lams or GRIDS[method]:
            vals, t0 = [], time.perf_counter()
            for i in picks:
                item = ds[i]
                batch = {k: (v[None] if isinstance(v, torch.Tensor) else v) for k, v in item.items()}
                physics = physics_from_batch(batch)
                x = reconstruct(method, batch["kspace"], physics, lam=lam)
                vals.append(psnr(x[0].abs().numpy(), item["target"].abs().numpy()))
            results[f"{method} {lam:g}"] = sum(vals) / len(vals)
            print(f"{method:10s} lam={lam:<8g} mean PSNR {results[f'{method} {lam:g}']:.2f} dB over {len(vals)} "
                  f"slices ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(json.dumps({"items": picks, "psnr": results}))


if __name__ == "__main__":
    main()
