"""MOL's Lipschitz estimate of ``H`` at its own reconstruction of every built-in test slice.

    python tools/lipschitz_at_test.py mol-lr-2d-4x                       # a shipped model
    python tools/lipschitz_at_test.py runs/mol_lr_2d/best.pt --slices 4  # a training run's checkpoint
    python tools/lipschitz_at_test.py mol-lr-2d-4x --out lip.json

For each slice: reconstruct, then ``model.certificate(physics)`` at that reconstruction (``L`` is the larger of
the adversarial ratio and the converged Jacobian power iteration for MOL-LR, the proof for MOL-SN). MOL-LR is
monotone by its own estimate at a slice when ``L < 1`` there; the summary line says at how many slices it is not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from molrecon.data.builtin import builtin_dataset, ensure_builtin
from molrecon.data.slice_dataset import collate, physics_from_batch
from molrecon.errors import MolreconError
from molrecon.io import machine_info, write_json_atomic
from molrecon.weights.loading import resolve_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="shipped model name, learned method name or checkpoint path")
    p.add_argument("--kind", default="2d")
    p.add_argument("--slices", type=int, default=None, help="the first N test slices (default: all)")
    p.add_argument("--out", type=Path, default=None, help="write the per-slice figures as JSON")
    a = p.parse_args()
    try:
        model = resolve_model(a.model).model  # in eval mode
    except MolreconError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ensure_builtin(a.kind)
    dataset = builtin_dataset(a.kind, "test", mask_func=None)  # the stored masks, as `make demo`
    n = len(dataset) if a.slices is None else min(a.slices, len(dataset))
    rows = []
    for i in range(n):
        batch = collate([dataset[i]])
        physics = physics_from_batch(batch)
        model(batch["kspace"], physics)
        cert = model.certificate(physics)  # at the reconstruction just made
        rows.append({"slice": i, "file": str(batch["fname"][0]), "L": cert["L"],
                     "certified": cert["certified"], "estimator": cert["estimator"]})
        print(f"slice {i:2d}  L = {cert['L']:.4f}", flush=True)
    worst = max(r["L"] for r in rows)
    above = sum(r["L"] >= 1 for r in rows)
    print(f"{a.model}: max L = {worst:.4f} over {n} test slices; L >= 1 at {above} of them")
    if a.out is not None:
        write_json_atomic(a.out, {"model": a.model, "kind": a.kind, "slices": rows, "max_L": worst,
                                  "slices_not_monotone": above, "command": " ".join(sys.argv),
                                  "machine": machine_info()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
