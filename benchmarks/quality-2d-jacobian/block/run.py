"""Contraction of the exact MOL block against the Lipschitz constant of H, at test reconstructions.

    OMP_NUM_THREADS=1 python benchmarks/quality-2d-jacobian/block/run.py MODEL SLICES OUT.json

At α = 1 the block is ``T(x) = D(H(x) + μA^H b)`` with ``D = (I + μA^H A)^{-1}``, so its Jacobian is ``D J_H``.
``‖D‖ ≤ 1``, with equality on the null space of ``A``: ``‖D J_H‖ ≤ ‖J_H‖``, and the gap says how much of ``H``'s
top direction the data-consistency step damps. Both norms by 150 power-iteration steps from the same seed, ``D``
by CG to 1e-7; ``sampled_fraction`` is ``‖A J_H v‖² / ‖J_H v‖²`` for the top direction ``v`` of ``J_H``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))
from _slices import builtin_test_slices, where_h_acts  # noqa: E402

from molrecon.io import machine_info  # noqa: E402
from molrecon.solvers.cg import conjugate_gradient  # noqa: E402
from molrecon.tensor_utils import batch_norms  # noqa: E402
from molrecon.weights.loading import resolve_model  # noqa: E402

STEPS = 150


def _power(fwd, bwd, shape, dtype) -> tuple[list[float], torch.Tensor]:
    v = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    v = v / batch_norms(v)
    history = []
    with torch.no_grad():
        for _ in range(STEPS):
            jv = fwd(v)
            history.append(float(batch_norms(jv)))
            u = bwd(jv)
            v = u / batch_norms(u)
    return history, v


def main() -> None:
    name, count, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = resolve_model(name).model.eval()
    mu = float(model.alpha * model.lam)
    rows = []
    for i, batch, physics in builtin_test_slices("2d", count):
        x = where_h_acts(model, batch, physics)
        jac = model.denoiser.jacobian_at(x, model._weights(tuple(x.shape[1:])))

        def damp(u, physics=physics):
            return conjugate_gradient(lambda w: w + mu * physics.normal(w), u, max_iter=200, tol=1e-7)[0]

        def block_jvp(w, jac=jac, damp=damp):
            return damp(jac.jvp(w))

        def block_vjp(u, jac=jac, damp=damp):
            return jac.vjp(damp(u))

        h_hist, v = _power(jac.jvp, jac.vjp, x.shape, x.dtype)
        t_hist, _ = _power(block_jvp, block_vjp, x.shape, x.dtype)
        with torch.no_grad():
            jv = jac.jvp(v)
            sampled = float(batch_norms(physics.A(jv)) ** 2 / batch_norms(jv) ** 2)
        row = {"slice": i, "norm_J_H": h_hist[-1], "norm_J_T": t_hist[-1], "norm_J_H_at_30": h_hist[29],
               "norm_J_T_at_30": t_hist[29], "sampled_fraction": sampled}
        rows.append(row)
        print(row, flush=True)
    out.write_text(json.dumps({"model": name, "mu": mu, "power_steps": STEPS, "rows": rows,
                               "machine": machine_info()}, indent=1))


if __name__ == "__main__":
    main()
