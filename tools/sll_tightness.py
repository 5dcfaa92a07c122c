"""How much of each SLL layer's 1-Lipschitz budget a MOL-SN model uses (diagnostic for ``docs/theory.md`` §SLL).

    .venv/bin/python tools/sll_tightness.py MODEL [--grid 128 128]

MODEL: a MOL-SN with an SLL network, shipped name or training checkpoint (e.g. ``runs/mol_sn_2d_sll/best.pt``
from ``configs/mol_sn_2d_sll.yaml``; the shipped ``mol-sn-2d-4x`` is an orthogonal network since 2026-12-06).

An SLL layer ``z − 2 Kᵀ T⁻¹ ReLU(K z + b)`` is 1-Lipschitz because ``T ⪰ K Kᵀ``. The number printed per layer is
``ρ = λ_max(T^{-1/2} K Kᵀ T^{-1/2})`` for the circulant convolution on the grid ``n + k − 1`` (which bounds the
zero-padded one on ``n``), computed exactly per frequency: ``ρ = 1`` means the weighted Gershgorin scaling ``T``
is tight, ``ρ < 1`` that the layer could act ``1/ρ`` times more strongly under the same proof. Also printed: the
same number for a freshly initialised layer of the same shape, and the largest Jacobian norm of the model's
``H`` that a power iteration finds at built-in test images and their reconstructions, beside the certified ``L``.
"""

from __future__ import annotations

import argparse

import torch

from molrecon.data import builtin_test_example
from molrecon.models.lipschitz import jacobian_spectral_norm
from molrecon.models.priors import SLLDenoiser, sll_scaling
from molrecon.weights.loading import resolve_model


def layer_tightness(weight: torch.Tensor, t: torch.Tensor, spatial: tuple[int, ...]) -> float:
    """``λ_max(T^{-1/2} K Kᵀ T^{-1/2})`` of the circulant convolution on the grid ``spatial + k − 1``."""
    nd = weight.ndim - 2
    grid = tuple(n + k - 1 for n, k in zip(spatial, weight.shape[2:]))
    w = weight.detach().double() / t.detach().double().sqrt().view(-1, *(1,) * (nd + 1))
    spec = torch.fft.rfftn(w, s=grid, dim=tuple(range(2, 2 + nd))).flatten(2).permute(2, 0, 1)
    gram = spec.mH @ spec  # [frequencies, state, state]: the same nonzero spectrum as the hidden-side Gram
    return float(torch.linalg.eigvalsh(gram)[..., -1].max())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("name", help="shipped model name or training checkpoint of a MOL-SN with an SLL network")
    p.add_argument("--grid", type=int, nargs="+", default=[128, 128])
    p.add_argument("--examples", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(1)
    model = resolve_model(a.name).model.eval()
    h = model.denoiser
    if not isinstance(h, SLLDenoiser):
        raise SystemExit(f"{a.name}: H is not an SLL network ({type(h).__name__})")
    spatial = tuple(a.grid)
    torch.manual_seed(0)
    fresh = SLLDenoiser(**h.config())
    print("layer  rho (trained)  rho (fresh init)")
    for i in range(h.layers):
        trained = layer_tightness(h.weights[i], sll_scaling(h.weights[i], h.log_q[i]), spatial)
        init = layer_tightness(fresh.weights[i], sll_scaling(fresh.weights[i], fresh.log_q[i]), spatial)
        print(f"{i:5d}  {trained:13.4f}  {init:16.4f}")
    for i in range(a.examples):
        y, physics, target = builtin_test_example(i)
        with torch.no_grad():
            x_rec = model(y, physics)
        points = torch.cat([target.to(torch.complex64), x_rec, model.initial_image(y, physics)])
        jac = jacobian_spectral_norm(model.prior, points, n_iter=30, generator=torch.Generator().manual_seed(0))
        print(f"test slice {i}: Jacobian norm of H at target / reconstruction / start "
              f"{' / '.join(f'{float(v):.4f}' for v in jac)}; certified L {model.certificate(physics)['L']:.4f}")


if __name__ == "__main__":
    main()
