"""Contraction of the exact MOL block against the Lipschitz constant of H, at test reconstructions.

    OMP_NUM_THREADS=1 python benchmarks/quality-2d-jacobian/block/run.py MODEL SLICES OUT.json

At α = 1 the block is ``T(x) = D(H(x) + μA^H b)`` with ``D = (I + μA^H A)^{-1}``, so its Jacobian is ``D J_H``.
``‖D‖ ≤ 1``, with equality on the null space of ``A``: ``‖D J_H‖ ≤ ‖J_H‖``, and the gap says how much of ``H``'s
top direction the data-consistency step damps. Both norms by 150 steps of the library's power iteration
(``jacobian_spectral_norm``) from the same seed, ``D`` by CG to 1e-7; ``sampled_fraction`` is
``‖A J_H v‖² / ‖J_H v‖²`` for the top direction ``v`` of ``J_H``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))
from _slices import builtin_slices, where_h_acts  # noqa: E402

from molrecon.io import machine_info  # noqa: E402
from molrecon.models.lipschitz import jacobian_spectral_norm  # noqa: E402
from molrecon.solvers.cg import conjugate_gradient  # noqa: E402
from molrecon.tensor_utils import batch_norms  # noqa: E402
from molrecon.weights.loading import resolve_model  # noqa: E402

STEPS = 150


def _norm(x: torch.Tensor, jac, steps: int) -> tuple[float, torch.Tensor]:
    """``‖jac‖`` at ``x`` by the library's power iteration, from the same seeded start every time."""
    # h is not evaluated when the Jacobian is given as an operator (linearize)
    sigma, v = jacobian_spectral_norm(None, x, n_iter=steps, generator=torch.Generator().manual_seed(0),
                                      return_vector=True, linearize=lambda _x: jac)
    return float(sigma[0]), v


def main() -> None:
    name, count, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = resolve_model(name).model.eval()
    mu = float(model.alpha * model.lam)
    rows = []
    for i, batch, physics in builtin_slices("2d", count):
        x = where_h_acts(model, batch, physics)
        jac_h = model.denoiser.jacobian_at(x, model.denoiser.effective_weights(tuple(x.shape[1:])))

        def damp(u, physics=physics):
            return conjugate_gradient(lambda w: w + mu * physics.normal(w), u, max_iter=200, tol=1e-7)[0]

        # D is self-adjoint, so the block's Jacobian D J_H has the transpose J_Hᵀ D
        jac_t = SimpleNamespace(jvp=lambda w, jac=jac_h, damp=damp: damp(jac.jvp(w)),
                                vjp=lambda u, jac=jac_h, damp=damp: jac.vjp(damp(u)))
        norm_h, v = _norm(x, jac_h, STEPS)
        norm_t, _ = _norm(x, jac_t, STEPS)
        with torch.no_grad():
            jv = jac_h.jvp(v)
            sampled = float(batch_norms(physics.A(jv)) ** 2 / batch_norms(jv) ** 2)
        row = {"slice": i, "norm_J_H": norm_h, "norm_J_T": norm_t, "norm_J_H_at_30": _norm(x, jac_h, 30)[0],
               "norm_J_T_at_30": _norm(x, jac_t, 30)[0], "sampled_fraction": sampled}
        rows.append(row)
        print(row, flush=True)
    out.write_text(json.dumps({"model": name, "mu": mu, "power_steps": STEPS, "rows": rows,
                               "machine": machine_info()}, indent=1))


if __name__ == "__main__":
    main()
