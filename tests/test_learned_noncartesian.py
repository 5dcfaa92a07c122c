"""Every learned method on the NUFFT operator: it runs, it trains (finite gradients), it is equivariant in the
k-space scale, and MOL's certificate takes ‖A‖ from the operator's certified bound."""

from __future__ import annotations

import pytest
import torch

from molrecon.models import build_model
from molrecon.names import LEARNED_METHODS
from molrecon.physics import NonCartesianMRI, simulate_coil_maps
from molrecon.physics.trajectories import golden_angle_dynamic, radial_trajectory

N = 24


def _problem(dims: str):
    g = torch.Generator().manual_seed(0)
    if dims == "2d+t":
        x = torch.randn(1, 3, N, N, generator=g, dtype=torch.complex64)
        maps = simulate_coil_maps((N, N), 3)[:, None].expand(-1, 3, -1, -1)[None].contiguous()
        physics = NonCartesianMRI(maps, golden_angle_dynamic(3, 6, 2 * N, image_size=N), dims="2d+t")
    else:
        x = torch.randn(1, N, N, generator=g, dtype=torch.complex64)
        physics = NonCartesianMRI(simulate_coil_maps((N, N), 3)[None], radial_trajectory(12, 2 * N, image_size=N))
    return physics.A(x), physics, x


def _model(method: str, dims: str):
    cfg = {"method": method, "dims": dims, "channels": 4, "layers": 2}
    if method == "modl":
        cfg.update(K=2, lam=1.0)
    else:
        cfg.update(max_iter=6, lam=1.0)
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.mark.parametrize("dims", ["2d", "2d+t"])
@pytest.mark.parametrize("method", list(LEARNED_METHODS))
def test_runs_trains_and_is_scale_equivariant(method, dims):
    y, physics, x = _problem(dims)
    model = _model(method, dims)
    out = model(y, physics)
    assert out.shape == x.shape and torch.isfinite(torch.view_as_real(out)).all()
    loss = (out.abs() - x.abs()).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    with torch.no_grad():
        a, b = model(y, physics), model(1e4 * y, physics) / 1e4
    assert float((a - b).norm() / a.norm()) < 1e-3


@pytest.mark.parametrize("method", [m for m in LEARNED_METHODS if m != "modl"])
def test_certificate_uses_the_operator_bound(method):
    y, physics, _ = _problem("2d")
    model = _model(method, "2d")
    with torch.no_grad():
        model(y, physics)
    cert = model.certificate(physics)
    assert cert["norm_A_bound"] == pytest.approx(physics.norm_bound())
    # the NUFFT's ‖A‖ is far from the Cartesian 1: a certificate assuming ‖A‖ ≤ 1 would be wrong here
    assert cert["norm_A_bound"] >= physics.power_norm(n_iter=30) > 1.5
