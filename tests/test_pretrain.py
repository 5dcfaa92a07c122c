"""Tests for denoiser pre-training of MOL's H (train/pretrain.py) and its hook in the trainer."""

from __future__ import annotations

import csv

import pytest
import torch

from molrecon.data import collate, physics_from_batch
from molrecon.data.synthetic import SyntheticSliceDataset
from molrecon.models import MOL
from molrecon.train import train
from molrecon.train.losses import mse_magnitude
from molrecon.train.pretrain import pretrain_prior

torch.set_num_threads(1)


def _denoising_mse(model: MOL, data) -> float:
    """Mean MSE of |H(x0)| against the target over every slice, at inference settings."""
    total = 0.0
    for i in range(len(data)):
        batch = collate([data[i]])
        x0 = model.initial_image(batch["kspace"], physics_from_batch(batch))
        with torch.no_grad():
            total += float(mse_magnitude(model.prior(x0), batch["target"], batch["max_value"]))
    return total / len(data)


def _run(constraint: str, architecture: str, steps: int, seed: int = 0):
    data = SyntheticSliceDataset(num=3, shape=(24, 24), num_coils=3, seed=seed)
    torch.manual_seed(seed)
    model = MOL(constraint=constraint, architecture=architecture, dims="2d", channels=6, layers=3,
                state_channels=4, lr_steps=2)
    rows = []
    before = _denoising_mse(model, data)
    summary = pretrain_prior(model, data, steps, 3e-3, seed, collate, physics_from_batch, torch.device("cpu"),
                             log=rows.append)
    summary["before"], summary["after"] = before, _denoising_mse(model, data)
    return model, summary, rows


@pytest.mark.parametrize("constraint,architecture", [("lr", "residual"), ("sn", "sll"), ("sn", "plain")])
def test_pretraining_fits_the_denoiser(constraint, architecture):
    model, summary, rows = _run(constraint, architecture, 40)
    assert summary["after"] < 0.95 * summary["before"]
    assert summary["pretrain_steps"] == 40
    assert ("lipschitz" in rows[0]) == (constraint == "lr")


def test_pretraining_is_deterministic_and_keeps_sll_certified():
    a, _, rows_a = _run("sn", "sll", 10)
    b, _, rows_b = _run("sn", "sll", 10)
    assert [r["mse"] for r in rows_a] == [r["mse"] for r in rows_b]
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    data = SyntheticSliceDataset(num=1, shape=(24, 24), num_coils=3)
    batch = collate([data[0]])
    assert a.certificate(physics_from_batch(batch))["certified"]


def test_trainer_pretrains_then_trains_and_resume_skips_it(tmp_path):
    cfg = {"name": "pt", "out_dir": str(tmp_path / "run"),
           "model": {"method": "mol-lr", "architecture": "residual", "dims": "2d", "channels": 6, "layers": 3,
                     "max_iter": 20, "lr_steps": 2},
           "data": {"source": "synthetic", "shape": [24, 24], "num_coils": 3, "num_train": 3, "num_val": 1},
           "train": {"max_steps": 2, "pretrain_steps": 5, "checkpoint_every": 1, "tensorboard": False,
                     "progress": False}}
    train(cfg)
    with open(tmp_path / "run" / "pretrain_log.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 5
    before = (tmp_path / "run" / "pretrain_log.csv").read_bytes()
    cfg["train"]["max_steps"] = 3
    train(cfg, resume=True)
    assert (tmp_path / "run" / "pretrain_log.csv").read_bytes() == before  # resumed: not pre-trained again
