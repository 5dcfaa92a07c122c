"""Plain vs Anderson (memory m = 2, 3, 5, 8) iterations of the shipped 2D MOL models at their shipped settings,
first 2 built-in test slices, one thread. Usage: python benchmarks/anderson-2d/run.py OUT.json"""
import json
import sys
import time

import torch

from molrecon.data.builtin import builtin_test_example
from molrecon.weights.loading import load_learned_model

torch.set_num_threads(1)
rows = []
for name in ("mol-lr-2d-4x", "mol-sn-2d-4x"):
    model = load_learned_model(pretrained=name)
    for idx in (0, 1):
        y, physics, _ = builtin_test_example(idx)
        base = None
        for solver, m in (("plain", None), ("anderson", 2), ("anderson", 3), ("anderson", 5), ("anderson", 8)):
            if m is not None:
                model.anderson_m = m
            t0 = time.perf_counter()
            x, info = model.solve(y, physics, solver=solver)
            dt = time.perf_counter() - t0
            it = float(info.iterations.float().mean())
            if solver == "plain":
                base, xp = it, x
            rows.append({"model": name, "slice": idx, "solver": solver, "m": m, "iterations": it,
                         "ratio_to_plain": it / base, "seconds": dt,
                         "rel_diff_to_plain": float((x - xp).abs().norm() / xp.abs().norm())})
            print(rows[-1], flush=True)
with open(sys.argv[1], "w") as f:
    json.dump(rows, f, indent=1)
