"""MOL's Lipschitz estimate of ``H`` at its own reconstruction of every built-in test slice.

    python tools/lipschitz_at_test.py mol-lr-2d-4x                       # a shipped model
    python tools/lipschitz_at_test.py runs/mol_lr_2d/best.pt --slices 4  # a training run's checkpoint
    python tools/lipschitz_at_test.py mol-lr-2d-4x --out lip.json
    python tools/lipschitz_at_test.py mol-lr-2d-4x --slices 4 --symmetric   # also the symmetric part's extremes
    python tools/lipschitz_at_test.py mol-lr-3d-4x --kind 3d --record     # keep the summary in the sidecar
    python tools/lipschitz_at_test.py mol-lr-2d-4x --split val            # the validation slices instead

For each slice: reconstruct, then ``model.certificate(physics)`` at that reconstruction (``L`` is the larger of
the adversarial ratio and the converged Jacobian power iteration for MOL-LR, the proof for MOL-SN). MOL-LR is
monotone by its own estimate at a slice when ``L < 1`` there; the summary line says at how many slices it is not.
``--record`` (a shipped model, every test item) keeps that summary in the model's sidecar, where ``molrecon
models`` shows it.

``--symmetric`` also reports the extreme eigenvalues of the symmetric part of ``H``'s Jacobian there (Lanczos,
:func:`molrecon.models.lipschitz.jacobian_symmetric_extremes`): monotonicity of ``F = I - H`` needs only
``lambda_max < 1``, while ``L < 1`` also bounds ``-lambda_min``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from _slices import builtin_slices, load_mol_or_none, where_h_acts

from molrecon.io import machine_info, write_json_atomic
from molrecon.models.lipschitz import jacobian_symmetric_extremes
from molrecon.weights.pretrained import available_names, record_lipschitz_at_test


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="shipped model name, learned method name or checkpoint path")
    p.add_argument("--kind", default="2d")
    p.add_argument("--slices", type=int, default=None, help="the first N test slices (default: all)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"),
                   help="the built-in split whose items to take (default: test; --record needs test)")
    p.add_argument("--out", type=Path, default=None, help="write the per-slice figures as JSON")
    p.add_argument("--symmetric", action="store_true",
                   help="also the largest and smallest eigenvalues of the Jacobian's symmetric part (40 Lanczos steps)")
    p.add_argument("--record", action="store_true",
                   help="keep the summary in the shipped model's sidecar (needs every test item: no --slices)")
    a = p.parse_args()
    if a.record and (a.slices is not None or a.split != "test" or a.model not in available_names()):
        print(f"error: --record needs a shipped model name and every test item, got {a.model!r}"
              f"{' with --slices' if a.slices is not None else ''}"
              f"{f' with --split {a.split}' if a.split != 'test' else ''}", file=sys.stderr)
        return 2
    model = load_mol_or_none(a.model)
    if model is None:
        return 2
    rows = []
    for i, batch, physics in builtin_slices(a.kind, a.slices, a.split):
        at = where_h_acts(model, batch, physics)
        cert = model.certificate(physics, x=at)
        row = {"slice": i, "file": str(batch["fname"][0]), "L": cert["L"], "certified": cert["certified"],
               "estimator": cert["estimator"]}
        line = f"slice {i:2d}  L = {cert['L']:.4f}"
        if a.symmetric:
            top, bottom = jacobian_symmetric_extremes(model.prior, at, generator=torch.Generator().manual_seed(0))
            row.update(sym_lambda_max=float(top.max()), sym_lambda_min=float(bottom.min()))
            line += f"  symmetric part: lambda_max {row['sym_lambda_max']:.4f}, lambda_min {row['sym_lambda_min']:.4f}"
        rows.append(row)
        print(line, flush=True)
    n = len(rows)
    worst = max(r["L"] for r in rows)
    above = sum(r["L"] >= 1 for r in rows)
    print(f"{a.model}: max L = {worst:.4f} over {n} {a.split} slices; L >= 1 at {above} of them")
    if a.symmetric:
        top = max(r["sym_lambda_max"] for r in rows)
        print(f"{a.model}: max lambda_max of the symmetric part = {top:.4f}; >= 1 at "
              f"{sum(r['sym_lambda_max'] >= 1 for r in rows)} of {n}")
    if a.record:
        path = record_lipschitz_at_test(a.model, {
            "max_L": worst, "items": n, "not_monotone": above, "certified": all(r["certified"] for r in rows),
            "kind": a.kind, "command": "python tools/lipschitz_at_test.py " + " ".join(sys.argv[1:])})
        print(f"recorded in {path}")
    if a.out is not None:
        write_json_atomic(a.out, {"model": a.model, "kind": a.kind, "split": a.split, "slices": rows, "max_L": worst,
                                  "slices_not_monotone": above, "command": " ".join(sys.argv),
                                  "machine": machine_info()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
