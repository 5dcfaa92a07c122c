"""Time per 2D test slice and PSNR of shipped MOL models at several start / block CG settings, each timed right
after MoDL K = 10 on the same slice (so that a changing machine load falls on both alike).

    OMP_NUM_THREADS=1 python benchmarks/inference-settings/run.py mol-lr-2d-4x,mol-sn-2d-4x 16 OUT.json

Settings are (CG steps of the CG-SENSE start, CG steps per block); the fixed point is the same at every setting.
PSNR: magnitude inside the object (fastMRI style), per slice against the slice's own maximum, averaged.
"""
import json, sys, time, warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from _slices import builtin_test_slices
from molrecon.weights.loading import resolve_model
from molrecon.io import machine_info
from molrecon.metrics import object_support, psnr
warnings.simplefilter("ignore")
torch.set_num_threads(1)
modl = resolve_model("modl-2d-4x").model.eval()
models = {n: resolve_model(n).model.eval() for n in sys.argv[1].split(",")}
settings = [(50, 15), (10, 15), (10, 10), (50, 10), (10, 8)]
times = {"modl": 0.0}; ps = {"modl": []}; its = {}
for n in models:
    for s in settings:
        times[(n, s)] = 0.0; ps[(n, s)] = []; its[(n, s)] = []
for i, b, p in builtin_test_slices("2d", int(sys.argv[2])):
    tgt = b["target"][0].numpy(); sup = object_support(tgt); dr = float(np.abs(tgt).max())
    y = (p.sampling_weights() * b["kspace"]).to(torch.complex64)
    def timed(fn):
        t = time.perf_counter(); out = fn(); return out, time.perf_counter() - t
    for n, m in models.items():
        for s in settings:
            x, t = timed(lambda: modl(y, p).detach())
            times["modl"] += t
            if len(ps["modl"]) <= i: ps["modl"].append(psnr(x[0].numpy(), tgt, dr, sup))
            m.init_cg_iter = s[0]
            (x, info), t = timed(lambda: m.solve(y, p, cg_iter=s[1]))
            times[(n, s)] += t; ps[(n, s)].append(psnr(x[0].numpy(), tgt, dr, sup)); its[(n, s)].append(int(info.iterations[0]))
nm = len(models) * len(settings)
tm = times["modl"] / nm
print(f"modl: {tm/len(ps['modl']):.3f} s/slice, psnr {np.mean(ps['modl']):.3f}")
for k in its:
    print(f"{k}: {times[k]/len(ps[k]):.3f} s/slice  {times[k]/tm:.2f}x  psnr {np.mean(ps[k]):.4f}  its {np.mean(its[k]):.1f}  max its {max(its[k])}")
rows = [{"model": "modl-2d-4x", "seconds_per_slice": tm / len(ps["modl"]), "psnr": float(np.mean(ps["modl"]))}]
rows += [{"model": k[0], "init_cg_iter": k[1][0], "cg_iter": k[1][1], "seconds_per_slice": times[k] / len(ps[k]),
          "ratio_to_modl": times[k] / tm, "psnr": float(np.mean(ps[k])), "iterations_mean": float(np.mean(its[k])),
          "iterations_max": int(max(its[k]))} for k in its]
out = {"slices": len(ps["modl"]), "threads": 1, "machine": machine_info(), "rows": rows}
Path(sys.argv[3]).write_text(json.dumps(out, indent=1))
