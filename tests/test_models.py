"""MoDL and the model factory (``molrecon.models``): differentiable unrolled CG, config round trips."""

from __future__ import annotations

import math

import pytest
import torch

from molrecon.data import collate, physics_from_batch
from molrecon.data.synthetic import SyntheticSliceDataset
from molrecon.errors import InputError
from molrecon.models import MoDL, build_model


def _batch(n: int = 2, shape=(32, 32)):
    ds = SyntheticSliceDataset(num=n, shape=shape, num_coils=4, seed=3)
    batch = collate([ds[i] for i in range(n)])
    return batch, physics_from_batch(batch)


def test_modl_forward_backward_differentiates_cg():
    torch.manual_seed(0)
    batch, physics = _batch()
    model = MoDL(K=2, dims="2d", channels=8, layers=3, lam=0.1, cg_iter=30, cg_tol=1e-7)
    x = model(batch["kspace"], physics)
    assert x.shape == batch["target"].shape and x.dtype == torch.complex64
    loss = (x.abs() - batch["target"].abs()).pow(2).mean()
    loss.backward()
    g_lam = float(model.lam.grad)
    assert g_lam != 0.0 and math.isfinite(g_lam)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # λ enters only through the CG solves: the autograd derivative must match a central finite difference,
    # which it can only do if the CG iterations themselves are differentiated.
    with torch.no_grad():
        h = 1e-2
        vals = []
        for d in (h, -h):
            model.lam.add_(d)
            xd = model(batch["kspace"], physics)
            vals.append(float((xd.abs() - batch["target"].abs()).pow(2).mean()))
            model.lam.sub_(d)
    fd = (vals[0] - vals[1]) / (2 * h)
    assert abs(fd - g_lam) <= 0.05 * abs(fd) + 1e-9, (fd, g_lam)
    assert model.last_info.iterations.tolist() == [2, 2]
    zero, logs = model.extra_loss(x, batch["target"])
    assert float(zero) == 0.0 and "lam" in logs


def test_modl_config_round_trip_and_bad_input():
    model = MoDL(K=3, dims="2d", channels=8, layers=3, lam=0.2, cg_iter=4)
    clone = build_model(model.config())
    assert isinstance(clone, MoDL) and clone.config() == model.config()
    clone.load_state_dict(model.state_dict())
    batch, physics = _batch(1)
    with torch.no_grad():
        assert torch.equal(model(batch["kspace"], physics), clone(batch["kspace"], physics))
    with pytest.raises(InputError):
        model(batch["kspace"][:, :2], physics)
    with pytest.raises(InputError):
        build_model({"method": "unet"})
    with pytest.raises(InputError):
        build_model({"method": "modl", "not_an_arg": 1})


@pytest.mark.parametrize("method,constraint", [("mol-sn", "sn"), ("mol-lr", "lr"), ("deq", "none")])
def test_factory_builds_mol_variants(method, constraint):
    model = build_model({"method": method, "channels": 8, "layers": 3})
    assert model.method_name == method
    assert model.constraint == constraint and model.config()["constraint"] == constraint
    again = build_model(model.config())
    assert again.config() == model.config()
