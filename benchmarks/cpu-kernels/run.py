"""CPU kernels for the 2D CNN of the training benchmark (5 × 32, 3×3, batch 1, 128², one thread): forward +
backward of a conv stack of the same shapes, contiguous vs channels_last vs torch.compile, trials interleaved so a
changing machine load falls on all alike. Usage: python benchmarks/cpu-kernels/run.py OUT.json"""
import json
import statistics
import sys
import time

import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)


def stack() -> nn.Module:
    chans = [2, 32, 32, 32, 32, 2]
    layers: list[nn.Module] = []
    for i in range(5):
        layers.append(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1))
        if i < 4:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


base = stack()
variants = {"contiguous": (base, torch.contiguous_format)}
cl = stack().to(memory_format=torch.channels_last)
cl.load_state_dict(base.state_dict())
variants["channels_last"] = (cl, torch.channels_last)
results: dict = {"error": {}}
try:
    plain = stack()
    plain.load_state_dict(base.state_dict())
    variants["torch.compile"] = (torch.compile(plain), torch.contiguous_format)
except Exception as exc:  # compile needs a C++ toolchain
    results["error"]["torch.compile"] = repr(exc)
x = torch.randn(1, 2, 128, 128)
ref = None
times: dict = {k: [] for k in variants}
for k, (net, fmt) in list(variants.items()):
    try:
        xi = x.clone(memory_format=fmt).requires_grad_(True)
        out = net(xi)
        out.square().sum().backward()
        g = xi.grad.clone()
        ref = g if ref is None else ref
        results.setdefault("max_grad_diff", {})[k] = float((g - ref).abs().max())
    except Exception as exc:
        results["error"][k] = repr(exc)
        variants.pop(k)
        times.pop(k)
for _ in range(15):
    for k, (net, fmt) in variants.items():
        xi = x.clone(memory_format=fmt).requires_grad_(True)
        t0 = time.perf_counter()
        net(xi).square().sum().backward()
        times[k].append(time.perf_counter() - t0)
results["median_ms"] = {k: 1e3 * statistics.median(v) for k, v in times.items()}
results["ratio_to_contiguous"] = {k: v / results["median_ms"]["contiguous"] for k, v in results["median_ms"].items()}
results["torch"] = torch.__version__
print(json.dumps(results, indent=1))
with open(sys.argv[1], "w") as f:
    json.dump(results, f, indent=1)
