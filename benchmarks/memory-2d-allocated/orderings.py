"""Measured before it was built (now ``train.penalty_backward: after_data`` and ``molrecon bench memory
--penalty-backward after_data``, which give the same bytes): MOL-LR's exact allocated peak of one training step
when the Lipschitz penalty's backward runs after the data loss's (the recorded block and the adjoint solve)
instead of with it, so that the two never overlap; the penalty is then computed at the detached reconstruction
and backpropagated on its own. It leaves the values unchanged and changes the order in which gradients are
summed.

Before the adversarial ratio's two CNN evaluations became two checkpoints (``adversarial_lipschitz``), this
script also measured that change (``split``): ``orderings-before-split.json``.
2D, 256² × 12 coils × 64 channels, batch 1, one thread, the step of ``molrecon bench memory`` (random target,
simulated coils, default mask), the peak from the profiler's allocation records (``AllocationTrace``).

    OMP_NUM_THREADS=1 python benchmarks/memory-2d-allocated/orderings.py benchmarks/memory-2d-allocated/orderings.json
"""
import gc
import json
import sys

import torch

from molrecon.bench.memory import AllocationTrace, step_problem
from molrecon.io import machine_info
from molrecon.models import build_method

RECIPE = dict(architecture="residual", residual_scale=0.9, cg_iter=15, lr_weight=1e-5, lr_threshold=0.9,
              lr_clip=None, lr_jacobian_steps=3, lr_jacobian_threshold=0.95)


def measure(after: bool, recipe: bool) -> dict:
    torch.manual_seed(0)
    physics, target, y = step_problem((256, 256), 12, "2d")
    model = build_method("mol-lr", 5, dims="2d", channels=64, layers=5, tol=1e-12, **(RECIPE if recipe else {}))
    model.train()
    gc.collect()
    trace = AllocationTrace(True)
    with trace:
        x = model(y, physics)
        trace.mark("forward")
        loss = (x.abs() - target.abs()).pow(2).mean()
        if after:
            loss.backward()
            trace.mark("data-loss backward")
            penalty = model.extra_loss(x.detach(), target)[0]
            trace.mark("penalty")
            penalty.backward()
            trace.mark("penalty backward")
        else:
            loss = loss + model.extra_loss(x, target)[0]
            trace.mark("loss")
            loss.backward()
            trace.mark("backward")
    peak, phases = trace.peaks()
    return {"recipe": recipe, "penalty_after_data_backward": after,
            "allocated_mib": peak / 2 ** 20, "phase_peaks_mib": {k: v / 2 ** 20 for k, v in phases.items()}}


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for recipe in (False, True):
        for after in (False, True):
            rows.append(measure(after, recipe))
            print(json.dumps(rows[-1]), flush=True)
    with open(sys.argv[1], "w") as fh:
        json.dump({"rows": rows, "command": " ".join(sys.argv), "machine": machine_info()}, fh, indent=1)


if __name__ == "__main__":
    main()
