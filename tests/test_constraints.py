"""Tests for MOL's constraint strategies (models/constraints.py): registry, parameters, old configs."""

from __future__ import annotations

import pytest
import torch

from molrecon.errors import InputError
from molrecon.models import MOL, build_model
from molrecon.models.constraints import (
    CONSTRAINT_STRATEGIES,
    LipschitzPenalty,
    SpectralNormalization,
    Unconstrained,
    make_constraint,
)
from molrecon.names import CONSTRAINTS


def test_every_constraint_name_has_a_strategy():
    assert set(CONSTRAINT_STRATEGIES) == set(CONSTRAINTS)
    assert CONSTRAINT_STRATEGIES["sn"].certified and not CONSTRAINT_STRATEGIES["lr"].certified
    assert CONSTRAINT_STRATEGIES["lr"].has_penalty and not CONSTRAINT_STRATEGIES["none"].has_penalty


def test_strategy_carries_its_parameters_and_mol_its_config():
    model = MOL(constraint="lr", dims="2d", channels=4, layers=2, lr_clip=0.9, lr_steps=3)
    assert isinstance(model.constraint_strategy, LipschitzPenalty)
    assert model.constraint_strategy.lr_clip == 0.9 and model.constraint_strategy.lr_steps == 3
    cfg = model.config()
    assert cfg["lr_clip"] == 0.9 and "lipschitz_target" not in cfg and "lr_warm_steps" not in cfg
    assert build_model({"method": "mol-lr", **cfg}).constraint_strategy == model.constraint_strategy
    sn = MOL(constraint=SpectralNormalization(lipschitz_target=0.8), dims="2d", channels=4, layers=2)
    assert sn.constraint == "sn" and sn.lipschitz_target == 0.8 and sn.constraint_strategy.certified
    assert sn.denoiser.lipschitz_target == 0.8


def test_configs_with_every_strategys_keys_still_load():
    """Configs written before constraints were classes hold all the keys: the foreign ones are ignored."""
    old = {"method": "deq", "dims": "2d", "channels": 4, "layers": 2, "lipschitz_target": 0.95, "lr_weight": 1e-6,
           "lr_threshold": 0.98, "lr_eps": 1e-3, "lr_steps": 4, "lr_noise": 0.01, "lr_step_size": 1.0,
           "lr_clip": 0.97}
    model = build_model(old)
    assert model.constraint_strategy == Unconstrained(lr_steps=4)
    with pytest.raises(InputError, match="unknown constraint option"):
        MOL(constraint="lr", lr_wieght=1.0)
    with pytest.raises(InputError, match="constraint must be one of"):
        make_constraint("orthogonal", {})
    with pytest.raises(InputError, match="inside the"):
        MOL(constraint=LipschitzPenalty(), lr_clip=0.5)
    with pytest.raises(InputError, match="lipschitz_target"):
        MOL(constraint="sn", lipschitz_target=1.5)


def test_penalty_and_safeguard_come_from_the_strategy():
    torch.manual_seed(0)
    lr = MOL(constraint="lr", dims="2d", channels=4, layers=2, lr_steps=2, lr_clip=0.5)
    x = torch.randn(1, 12, 12, dtype=torch.complex64)
    loss, logs = lr.extra_loss(x)
    assert loss.requires_grad and logs["lipschitz"] > 0 and logs["lipschitz_penalty"] > 0
    before = lr.denoiser.convs[0].weight.clone()
    scale = lr.enforce_lipschitz(1.0)
    assert scale == pytest.approx(0.5 ** 0.5) and torch.allclose(lr.denoiser.convs[0].weight, before * scale)
    sn = MOL(constraint="sn", dims="2d", channels=4, layers=2)
    assert sn.extra_loss(x) == (sn.log_lam.new_zeros(()), {}) and sn.enforce_lipschitz(5.0) == 1.0


def test_a_checkpoint_with_every_strategys_keys_resumes(tmp_path):
    """Checkpoints written before constraints were classes store all the constraint keys; they still resume."""
    from molrecon.train import train
    from molrecon.weights.checkpoint import load_checkpoint, save_checkpoint

    cfg = {"name": "old", "out_dir": str(tmp_path / "run"),
           "model": {"method": "mol-lr", "dims": "2d", "channels": 4, "layers": 2, "max_iter": 10, "lr_steps": 2},
           "data": {"source": "synthetic", "shape": [16, 16], "num_coils": 2, "num_train": 2, "num_val": 1},
           "train": {"max_steps": 1, "checkpoint_every": 1, "tensorboard": False, "progress": False}}
    train(cfg)
    last = tmp_path / "run" / "last.pt"
    state = load_checkpoint(last)
    state["model_config"] = {**state["model_config"], "lipschitz_target": 0.95}  # the old layout
    save_checkpoint(last, state)
    cfg["train"]["max_steps"] = 2
    assert train(cfg, resume=True)["step"] == 2
