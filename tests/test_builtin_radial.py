"""The built-in radial sets: layout, spokes, the operator of a batch, the weakened inverse crime, determinism."""

from __future__ import annotations

import h5py
import pytest
import torch

from molrecon.data import RadialDataset, build_builtin, collate, load_manifest, physics_from_batch
from molrecon.data.builtin import builtin_dataset
from molrecon.data.builtin_radial import simulate_radial
from molrecon.errors import InputError
from molrecon.physics import NonCartesianMRI
from molrecon.physics.trajectories import radial_trajectory
from molrecon.recon import cg_sense
from molrecon.train.datasets import build_datasets


@pytest.fixture(scope="module")
def radial_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("radial-data")
    build_builtin(root / "radial", "radial", size=32, units=1, max_train_slices=2, contrasts=["t1"], spokes=24)
    build_builtin(root / "radial-dynamic", "radial-dynamic", size=32, frames=4, n_train=1, n_val=1, n_test=1,
                  spokes_per_frame=6, contrasts=["t1"])
    return root


def test_layout_and_spokes(radial_root):
    manifest = load_manifest(radial_root / "radial")
    assert manifest["dims"] == "2d" and "trajectory" in manifest["layout"] and "weakened" in manifest["note"]
    full = RadialDataset(radial_root / "radial" / "train")
    item = full[0]
    assert item["kspace"].shape == (8, 24 * 64) and item["trajectory"].shape == (24 * 64, 2)
    assert item["maps"].shape == (8, 32, 32) and item["target"].shape == (32, 32)
    assert float(item["trajectory"].abs().max()) <= 16
    few = RadialDataset(radial_root / "radial" / "train", spokes=8)[0]
    # the first spokes of the golden-angle sequence, samples unchanged
    assert torch.equal(few["kspace"], item["kspace"][:, :8 * 64])
    assert torch.equal(few["trajectory"], item["trajectory"][:8 * 64])


def test_bad_requests(radial_root):
    with pytest.raises(InputError, match="asked for 25 spokes, the file has 24"):
        RadialDataset(radial_root / "radial" / "train", spokes=25)
    with pytest.raises(InputError, match="not a mask"):
        RadialDataset(radial_root / "radial" / "train", mask_func=lambda *a, **k: None)


def test_batch_operator_reconstructs(radial_root):
    ds = builtin_dataset("radial", "val", radial_root, spokes=24)
    batch = collate([ds[0]])
    physics = physics_from_batch(batch)
    assert isinstance(physics, NonCartesianMRI) and physics.dims == "2d"
    x = cg_sense(batch["kspace"], physics, lam=1e-2, max_iter=30)
    t = batch["target"]
    assert float((x - t).norm() / t.norm()) < 0.35
    dyn = collate([RadialDataset(radial_root / "radial-dynamic" / "train")[0]])
    ph = physics_from_batch(dyn)
    assert ph.dims == "2d+t" and dyn["kspace"].shape == (1, 8, 4, 6 * 64)
    ph.check_kspace(dyn["kspace"])


def test_mixed_trajectories_refused(radial_root):
    ds = RadialDataset(radial_root / "radial" / "train")
    batch = collate([ds[0], ds[1]])
    batch["trajectory"] = batch["trajectory"].clone()
    batch["trajectory"][1] *= 0.5
    with pytest.raises(InputError, match="mixes trajectories"):
        physics_from_batch(batch)


def test_inverse_crime_is_weakened():
    """Noise-free data of the finer object differ from the reconstruction operator applied to the target by a
    small but nonzero amount (the coarse model cannot reproduce them exactly)."""
    g = torch.Generator().manual_seed(0)
    fine = torch.zeros(1, 64, 64, dtype=torch.float64)
    fine[:, 16:48, 20:44] = 1.0
    fine[:, 26:34, 28:36] = 0.3 + torch.rand(8, 8, generator=g, dtype=torch.float64)
    traj = radial_trajectory(24, 64, image_size=32)
    import numpy as np

    sim = simulate_radial(fine.numpy(), traj, 32, 4, snr_db=300.0, rng=np.random.default_rng(0))
    y = torch.from_numpy(sim["kspace"])
    coarse = NonCartesianMRI(torch.from_numpy(sim["maps"]), traj)
    residual = float((y - coarse.A(torch.from_numpy(sim["target"]))).norm() / y.norm())
    assert 1e-3 < residual < 0.2


def test_deterministic(tmp_path):
    a = build_builtin(tmp_path / "a", "radial", size=16, units=1, max_train_slices=1, contrasts=["t1"], spokes=8)
    b = build_builtin(tmp_path / "b", "radial", size=16, units=1, max_train_slices=1, contrasts=["t1"], spokes=8)
    assert [f["sha256"] for f in load_manifest(a)["files"]] == [f["sha256"] for f in load_manifest(b)["files"]]
    with h5py.File(next((a / "train").glob("*.h5"))) as f:
        assert bool(f.attrs["simulated"]) and not bool(f.attrs["inverse_crime"])


def test_training_datasets(radial_root):
    cfg = {"source": "builtin", "kind": "radial", "root": str(radial_root), "spokes": 12, "limit_train": None,
           "limit_val": None}
    train, val = build_datasets(cfg)
    assert isinstance(train, RadialDataset) and train[0]["kspace"].shape[-1] == 12 * 64 and len(val) == 1
