"""The per-slice fixed-point cache (train.fixed_point_cache): warm starts, exact resume, DDP, amortised MOL-LR."""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from molrecon.train import Trainer, validate_config
from molrecon.train.fixed_point_cache import SHARED_SLOT, FixedPointCache
from molrecon.weights.checkpoint import load_checkpoint

MOL_LR = {"method": "mol-lr", "dims": "2d", "channels": 4, "layers": 3, "max_iter": 15, "tol": 1e-4, "lam": 10.0,
          "cg_iter": 3, "init_cg_iter": 5, "lr_steps": 2, "lr_warm_steps": 1}


def _config(out_dir: Path, max_steps: int, batch_size: int = 1, cache: bool = True, **model: Any) -> dict:
    """2 synthetic 12×12 slices: with batch 1, steps 3-4 are the second epoch (every slice warm)."""
    return validate_config({
        "out_dir": str(out_dir), "model": {**MOL_LR, **model},
        "data": {"source": "synthetic", "shape": [12, 12], "num_coils": 2, "num_train": 2, "num_val": 1,
                 "batch_size": batch_size},
        "train": {"max_steps": max_steps, "schedule": "constant", "checkpoint_every": 2, "progress": False,
                  "tensorboard": False, "val_every": 0, "fixed_point_cache": cache}})


def _fit(cfg: dict, resume: bool = False) -> Trainer:
    trainer = Trainer(cfg, resume=resume, overwrite=not resume)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        trainer.fit()
    trainer.close()
    return trainer


def test_cache_partial_hits_fill_from_default_and_state_round_trips():
    cache = FixedPointCache()
    assert cache.get([0, 1], "x", (2, 2), "cpu") is None
    cache.put([1], "x", torch.ones(1, 2, 2, dtype=torch.complex64))
    assert cache.get([0, 1], "x", (2, 2), "cpu") is None  # partial hit, no default: cold start
    got = cache.get([0, 1], "x", (2, 2), "cpu", default=lambda: torch.zeros(2, 2, 2, dtype=torch.complex64))
    assert torch.equal(got[0], torch.zeros(2, 2)) and torch.equal(got[1], torch.ones(2, 2))
    assert cache.get([1], "x", (3, 3), "cpu") is None  # another shape is a miss
    again = FixedPointCache()
    again.load_state_dict(cache.state_dict())
    assert torch.equal(again.get([1], "x", (2, 2), "cpu"), cache.get([1], "x", (2, 2), "cpu"))


def test_warm_start_same_fixed_point_fewer_iterations():
    """Started from the converged point, the solve stops at once and returns the same fixed point."""
    from molrecon.bench.speed import random_mol
    from molrecon.physics import MultiCoilMRI, mask_for, simulate_coil_maps

    maps = simulate_coil_maps((24, 24), 2)[None]
    physics = MultiCoilMRI(maps, mask_for("2d", 4.0)((24, 24), seed=0, dims="2d"), dims="2d")
    y = physics.A(torch.randn(1, 24, 24, dtype=torch.complex64))
    model = random_mol("mol-sn", "2d", channels=4, layers=3, max_iter=200, tol=1e-6)
    cold, info_cold = model.solve(y, physics)
    warm, info_warm = model.solve(y, physics, x0=cold)
    assert int(info_warm.iterations[0]) < int(info_cold.iterations[0])
    assert float((warm - cold).abs().max() / cold.abs().max()) < 1e-4


@pytest.mark.parametrize("extra", [{}, {"lr_jacobian_steps": 2}, {"lr_jacobian_steps": 2, "lr_jacobian_block": 2},
                                   {"lr_zero_jacobian_steps": 2}],
                         ids=["adversarial", "with-jacobian", "with-jacobian-block", "with-zero-jacobian"])
def test_resume_with_the_cache_is_bitwise_exact_and_needs_the_cache(tmp_path, extra):
    whole = _fit(_config(tmp_path / "whole", 4, **extra))
    slices = {k: v for k, v in whole.fp_cache.entries.items() if k != SHARED_SLOT}
    assert len(slices) == 2 and whole.fp_cache.hits > 0
    names = {"x", "lip_v"} | ({"lip_u"} if "lr_jacobian_steps" in extra else set())
    assert all(set(entry) == names for entry in slices.values())
    if "lr_zero_jacobian_steps" in extra:  # one vector for the whole training, in the shared slot only
        assert set(whole.fp_cache.entries[SHARED_SLOT]) == {"lip_z"}
        assert whole.fp_cache.entries[SHARED_SLOT]["lip_z"].shape == (12, 12)
    if "lr_jacobian_block" in extra:  # k vectors per slice, kept and continued as one block
        assert all(entry["lip_u"].shape == (extra["lr_jacobian_block"], 12, 12) for entry in slices.values())
    # the Jacobian vector of the last step is kept for the next slice's first visit
    assert (SHARED_SLOT in whole.fp_cache.entries) == bool(extra)
    _fit(_config(tmp_path / "cut", 2, **extra))
    ck = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert sorted(ck["fixed_point_cache"]["entries"]) == ([SHARED_SLOT] if extra else []) + [0, 1]
    resumed = _fit(_config(tmp_path / "cut", 4, **extra), resume=True)
    for key, v in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], v), key
    # without the cache in the checkpoint the second epoch starts cold: not the same run (the test can fail)
    del ck["fixed_point_cache"]
    (tmp_path / "cold").mkdir()
    torch.save(ck, tmp_path / "cold" / "last.pt")
    cold = _fit(_config(tmp_path / "cold", 4, **extra), resume=True)
    assert any(not torch.equal(cold.model.state_dict()[k], v) for k, v in whole.model.state_dict().items())


def test_amortised_lipschitz_continues_from_the_given_point():
    from molrecon.models import MOL
    from molrecon.models.lipschitz import adversarial_lipschitz

    model = MOL(constraint="lr", dims="2d", channels=4, layers=3, lr_steps=5, lr_warm_steps=1)
    assert model.config()["lr_warm_steps"] == 1 and "lr_warm_steps" not in MOL(constraint="lr").config()
    x = torch.randn(1, 16, 16, dtype=torch.complex64)
    v0 = torch.randn(1, 16, 16, dtype=torch.complex64)
    _, logs = model.extra_loss(x, v0=v0)
    w = model._weights((16, 16))
    ref, point = adversarial_lipschitz(lambda v: model._h(v, w), x, steps=1, v0=v0, return_point=True)
    assert logs["lipschitz"] == pytest.approx(float(ref.detach().max()), rel=1e-6)
    assert torch.equal(model.last_lip_point, point)
    with pytest.raises(Exception, match="lr_warm_steps"):
        MOL(constraint="lr", lr_warm_steps=0)


# -- DDP: every rank holds the global cache -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, cfg: dict, dump_dir: str) -> None:
    os.environ.update({"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)})
    torch.set_num_threads(1)
    trainer = Trainer(cfg, overwrite=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            trainer.fit()
        torch.save({"state": trainer.model.state_dict(), "cache": trainer.fp_cache.state_dict()},
                   Path(dump_dir) / f"rank{rank}.pt")
    finally:
        trainer.close()


def test_ddp_ranks_share_one_cache_and_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    # 2 ranks × batch 1 = global batch 2: 2 steps are 2 epochs of the 2 slices. MOL-SN: the MOL-LR penalty
    # draws its random start per rank, so it does not equal one process with the global batch
    ddp_cfg = _config(tmp_path / "ddp", 2, batch_size=1, method="mol-sn")
    mp.spawn(_worker, args=(2, _free_port(), ddp_cfg, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single = _fit(_config(tmp_path / "single", 2, batch_size=2, method="mol-sn"))
    for r in ranks:
        assert sorted(r["cache"]["entries"]) == [0, 1]
        for k, entry in ranks[0]["cache"]["entries"].items():
            assert torch.equal(r["cache"]["entries"][k]["x"], entry["x"])
    assert sorted(load_checkpoint(tmp_path / "ddp" / "last.pt")["fixed_point_cache"]["entries"]) == [0, 1]
    for key, v in single.model.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][key], v, rtol=1e-4, atol=1e-5, msg=key)
