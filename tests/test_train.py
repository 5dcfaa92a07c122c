"""Tests of the training side: MoDL, the model factory, the trainer, checkpoints, configs and `molrecon train`."""

from __future__ import annotations

import csv
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import molrecon
from _killable import KILLABLE_CLI
from molrecon.data import collate, physics_from_batch
from molrecon.data.synthetic import SyntheticSliceDataset
from molrecon.errors import CheckpointError, InputError
from molrecon.models import MoDL
from molrecon.train import (
    ResumableSampler,
    Trainer,
    TrainingDivergedError,
    apply_overrides,
    load_config,
    validate_config,
)
from molrecon.train.health import HealthMonitor
from molrecon.train.validation import becomes_best
from molrecon.weights.checkpoint import load_checkpoint, load_model_from_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_2d.yaml"


def tiny_config(out_dir: Path, **train) -> dict:
    """The tiny config on the synthetic in-memory data (no dataset build needed)."""
    cfg = load_config(TINY, [f"out_dir={out_dir}", "data.source=synthetic", "data.shape=[32,32]",
                             "data.num_train=5", "data.num_val=1", "train.progress=false"])
    cfg["train"].update(train)
    return validate_config(cfg)


def _batch(n: int = 2, shape=(32, 32)):
    ds = SyntheticSliceDataset(num=n, shape=shape, num_coils=4, seed=3)
    batch = collate([ds[i] for i in range(n)])
    return batch, physics_from_batch(batch)


# -- config -------------------------------------------------------------------------------------------------------
def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(TINY, ["train.lr=2e-4", "data.batch_size=2", "out_dir=x/y", "model.channels=4"])
    assert cfg["train"]["lr"] == 2e-4 and cfg["data"]["batch_size"] == 2 and cfg["out_dir"] == "x/y"
    assert cfg["model"]["channels"] == 4 and cfg["train"]["weight_decay"] == 0.0  # default filled
    with pytest.raises(InputError, match="train.lrr"):
        load_config(TINY, ["train.lrr=1"])
    with pytest.raises(InputError, match="key=value"):
        apply_overrides({}, ["train.lr"])
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(InputError, match="not a valid YAML"):
        load_config(evil)
    assert load_config(TINY, ["model.lr_steps=0"])["model"]["lr_steps"] == 0  # 0: no adversarial term
    with pytest.raises(InputError, match="lr_steps must be an integer >= 0"):
        load_config(TINY, ["model.lr_steps=-2"])
    with pytest.raises(InputError, match="model.channels must be a positive integer"):
        load_config(TINY, ["model.channels=0"])
    shipped = sorted((REPO / "configs").glob("**/*.yaml"))
    assert {"mol_lr_2d.yaml", "mol_lr_3d.yaml", "modl_3d.yaml", "modl_dynamic.yaml"} <= {p.name for p in shipped}
    for path in shipped:
        load_config(path)  # every shipped config validates


def test_resumable_sampler_skips_and_shards():
    s = ResumableSampler(7, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, skip=3)
    assert list(s) == full[3:] and sorted(full) == list(range(7))
    s.set_epoch(3)
    assert list(s) != full  # reshuffled per epoch
    ranks = [ResumableSampler(7, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    assert set(ranks[0]) | set(ranks[1]) == set(range(7)) and len(ranks[0]) == len(ranks[1]) == 4


# -- trainer ------------------------------------------------------------------------------------------------------
def test_trainer_step_reduces_loss(tmp_path):
    cfg = tiny_config(tmp_path / "run", lr=3e-3, lam_lr=1e-2, schedule="constant", max_steps=1000)
    ds = SyntheticSliceDataset(num=1, shape=(32, 32), num_coils=4, seed=5)
    trainer = Trainer(cfg, train_dataset=ds, val_dataset=None)
    trainer.setup()
    batch = collate([ds[0]])
    losses = [trainer.train_step(batch)["loss"] for _ in range(25)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_trainer_fit_writes_logs_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    result = Trainer(tiny_config(out, max_steps=6, checkpoint_every=3, tensorboard=True)).fit()
    assert result["step"] == 6 and math.isfinite(result["val_psnr"])
    assert result["psnr_definition"].startswith("whole-image")
    for name in ("last.pt", "best.pt", "train_log.csv", "val_log.csv", "config.yaml"):
        assert (out / name).exists(), name
    assert any((out / "tb").iterdir())
    rows = (out / "train_log.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,loss") and len(rows) == 7
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 6 and state["model_config"]["method"] == "modl"
    assert {"torch", "numpy", "python"} <= set(state["rng"])
    # refuses to clobber an existing run unless asked
    with pytest.raises(InputError, match="--resume"):
        Trainer(tiny_config(out, max_steps=6)).fit()


def test_init_from_starts_from_the_weights_of_another_run_and_refuses_what_does_not_fit(tmp_path):
    source = Trainer(tiny_config(tmp_path / "source", max_steps=2, checkpoint_every=2))
    source.fit()
    start = Trainer(tiny_config(tmp_path / "fine", max_steps=2, init_from=str(tmp_path / "source" / "last.pt")))
    start.setup()
    for key, value in source.model.state_dict().items():
        assert torch.equal(start.model.state_dict()[key], value), key
    after_init = torch.rand(4)
    Trainer(tiny_config(tmp_path / "fresh", max_steps=2)).setup()
    # the throw-away build of the source model left the run's random state where a fresh run has it
    assert torch.equal(torch.rand(4), after_init)
    wider = tiny_config(tmp_path / "wider", max_steps=2, init_from=str(tmp_path / "source" / "last.pt"))
    wider["model"]["channels"] = 16
    with pytest.raises(CheckpointError, match="last.pt: weights do not fit"):
        Trainer(wider).setup()
    with pytest.raises(CheckpointError, match="not found"):
        Trainer(tiny_config(tmp_path / "x", init_from=str(tmp_path / "missing.pt"))).setup()
    with pytest.raises(InputError, match="init_from"):
        tiny_config(tmp_path / "x", init_from=3)
    with pytest.raises(InputError, match="mol-lr-2d-4x holds a 'mol-lr' model, not 'modl'"):
        Trainer(tiny_config(tmp_path / "x", init_from="mol-lr-2d-4x")).setup()
    # a fixed-point model may start from another of the same H: a MOL-LR from the unconstrained DEQ
    deq_config = {**molrecon.load_pretrained("deq-2d-4x").config(), "method": "mol-lr"}
    mol_lr = tiny_config(tmp_path / "from-deq", max_steps=2, init_from="deq-2d-4x")
    mol_lr["model"] = {k: deq_config[k] for k in ("method", "architecture", "residual_scale", "dims", "channels",
                                                 "layers")}
    start = Trainer(validate_config(mol_lr))
    start.setup()
    for key, value in molrecon.load_pretrained("deq-2d-4x").state_dict().items():
        assert torch.equal(start.model.state_dict()[key], value), key
    mol_lr["model"] = {"method": "mol-sn", "dims": "2d", "channels": 32, "layers": 5}  # the same tensors, plain H
    with pytest.raises(InputError, match="deq-2d-4x holds a deq model with a 'residual' H, the run's H is 'plain'"):
        Trainer(validate_config(mol_lr)).setup()


def test_checkpoint_round_trip(tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(out, max_steps=2, checkpoint_every=1))
    trainer.fit()
    model = load_model_from_checkpoint(out / "last.pt")
    assert not model.training and model.config() == trainer.model.config()
    for (k, a), b in zip(trainer.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    # explicit save/load of a hand-made state
    path = save_checkpoint(tmp_path / "m.pt", {"model_config": model.config(), "model_state": model.state_dict(),
                                               "metrics": {"val_psnr": 30.0}})
    state = load_checkpoint(path)
    assert state["metrics"]["val_psnr"] == 30.0 and state["format"] == "molrecon-checkpoint"
    batch, physics = _batch(1)
    with torch.no_grad():
        assert torch.equal(model(batch["kspace"], physics),
                           load_model_from_checkpoint(path)(batch["kspace"], physics))
    # a NaN model is never saved
    bad = {k: v.clone() for k, v in model.state_dict().items()}
    bad["lam"] = torch.tensor(float("nan"))
    with pytest.raises(CheckpointError, match="NaN"):
        save_checkpoint(tmp_path / "m.pt", {"model_config": model.config(), "model_state": bad})
    assert torch.isfinite(load_checkpoint(path)["model_state"]["lam"])


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: a stand-in for arbitrary code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    model = MoDL(K=1, channels=4, layers=2)
    for i, writer in enumerate(("torch", "pickle")):
        path = tmp_path / f"evil{i}.pt"
        payload = {"format": "molrecon-checkpoint", "version": 1, "model_config": model.config(),
                   "model_state": model.state_dict(), "metrics": _Payload(str(marker))}
        if writer == "torch":
            torch.save(payload, path)
        else:
            path.write_bytes(pickle.dumps(payload))
        with pytest.raises(CheckpointError, match="refused"):
            load_checkpoint(path)
        with pytest.raises(CheckpointError, match="refused"):
            load_model_from_checkpoint(path)
        assert not marker.exists(), "the payload ran"
    # the payload is real: an unsafe load would have executed it
    torch.load(tmp_path / "evil0.pt", weights_only=False)
    assert marker.exists()


def test_corrupted_checkpoint_gives_clear_error(tmp_path):
    model = MoDL(K=1, channels=4, layers=2)
    good = save_checkpoint(tmp_path / "good.pt", {"model_config": model.config(), "model_state": model.state_dict()})
    data = good.read_bytes()
    cases = {"truncated.pt": data[: len(data) // 2], "garbage.pt": os.urandom(4096), "empty.pt": b"",
             "flipped.pt": data[:200] + bytes(b ^ 0xFF for b in data[200:400]) + data[400:]}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError) as exc:
            load_checkpoint(tmp_path / name)
        assert name in str(exc.value) and ("corrupt" in str(exc.value) or "truncated" in str(exc.value)
                                           or "refused" in str(exc.value)), str(exc.value)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a molrecon checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    wrong = save_checkpoint(tmp_path / "wrong.pt", {"model_config": {**model.config(), "channels": 6},
                                                    "model_state": model.state_dict()})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model_from_checkpoint(wrong)


class _PoisonTrainer(Trainer):
    """Sets the CNN weights to NaN just before step ``poison_at`` (once): the forward then yields NaN."""

    poison_at = 5
    poisoned = False

    def train_step(self, batch):
        if self.step + 1 == self.poison_at and not self.poisoned:
            type(self).poisoned = True
            with torch.no_grad():
                next(self.model.denoiser.parameters()).fill_(float("nan"))
        return super().train_step(batch)


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    _PoisonTrainer.poisoned = False
    with pytest.raises(TrainingDivergedError, match=r"step 5: .*last good checkpoint kept"):
        _PoisonTrainer(tiny_config(out, max_steps=8, checkpoint_every=2)).fit()
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model_state"].values())


def test_nan_rollback_lowers_lr_and_finishes(tmp_path):
    out = tmp_path / "run"
    _PoisonTrainer.poisoned = False
    trainer = _PoisonTrainer(tiny_config(out, max_steps=8, checkpoint_every=2, on_divergence="rollback",
                                         rollback_lr_factor=0.5, schedule="constant"))
    result = trainer.fit()
    assert result["step"] == 8 and trainer.rollbacks == 1
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * trainer.tcfg["lr"])
    assert load_checkpoint(out / "last.pt")["rollbacks"] == 1


def test_lipschitz_and_residual_guards(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "run", lipschitz_limit=1.0, lipschitz_patience=3, residual_limit=1.0))
    trainer.health = HealthMonitor("mol-lr", trainer.tcfg)
    assert trainer.check_health({"final_residual": 1e-3}) is None
    assert "diverged" in trainer.check_health({"final_residual": 5.0})
    assert trainer.check_health({"lipschitz": 1.5}) is None
    assert trainer.check_health({"lipschitz": 0.9}) is None  # a good step resets the count
    assert trainer.check_health({"lipschitz": 1.5}) is None
    assert trainer.check_health({"lipschitz": 1.5}) is None
    assert "Lipschitz" in trainer.check_health({"lipschitz": 1.5})
    trainer.health = HealthMonitor("deq", trainer.tcfg)  # unconstrained: its Lipschitz constant is only logged
    assert all(trainer.check_health({"lipschitz": 3.0}) is None for _ in range(5))


# -- exact resume after SIGKILL ---------------------------------------------------------------------------------


def _run(args: list[str], kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "KILL_AT_STEP": str(kill_at)}
    return subprocess.run([sys.executable, "-c", KILLABLE_CLI, *args], env=env, capture_output=True, text=True,
                          timeout=240, cwd=REPO)


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path):
    common = ["train", str(TINY), "--no-progress", "--set", "data.source=synthetic", "--set", "data.shape=[32,32]",
              "--set", "data.num_train=5", "--set", "data.num_val=1", "--set", "data.batch_size=2",
              "--set", "train.max_steps=9", "--set", "train.checkpoint_every=3"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    r = _run(common + ["--set", f"out_dir={ref}"])
    assert r.returncode == 0, r.stderr[-2000:]
    # killed during step 6 (after the checkpoint at step 3 and 5 logged steps)
    k = _run(common + ["--set", f"out_dir={cut}"], kill_at=6)
    assert k.returncode == -9, (k.returncode, k.stderr[-2000:])
    assert load_checkpoint(cut / "last.pt")["step"] == 3
    assert len((cut / "train_log.csv").read_text().splitlines()) == 1 + 5
    r2 = _run(common + ["--set", f"out_dir={cut}", "--resume"])
    assert r2.returncode == 0, r2.stderr[-2000:]
    a, b = load_checkpoint(ref / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["step"] == b["step"] == 9 and a["epoch"] == b["epoch"]
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["metrics"]["val_psnr"] == b["metrics"]["val_psnr"]
    # the log of the resumed run is the log of the uninterrupted run (rows after the checkpoint replaced)
    col = lambda p: [ln.split(",")[:4] for ln in (p / "train_log.csv").read_text().splitlines()]  # noqa: E731
    assert col(ref) == col(cut)


def test_cli_reports_bad_config(tmp_path):
    from molrecon.cli import main

    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert main(["train", str(TINY), "--set", "model.method=unet"]) == 2


class _InterruptTrainer(Trainer):
    """Raises KeyboardInterrupt at the start of step ``stop_at`` (an in-process stand-in for a kill)."""

    stop_at = 5

    def train_step(self, batch):
        if self.step + 1 == self.stop_at:
            raise KeyboardInterrupt
        return super().train_step(batch)


@pytest.mark.parametrize("method", ["modl", pytest.param("mol-sn", marks=pytest.mark.slow),
                                    pytest.param("mol-lr", marks=pytest.mark.slow),
                                    pytest.param("deq", marks=pytest.mark.slow)])
def test_resume_in_process_is_exact_for_every_method(tmp_path, method):
    model = {"method": "modl", "K": 2, "dims": "2d", "channels": 4, "layers": 3, "cg_iter": 3} if method == "modl" \
        else {"method": method, "dims": "2d", "channels": 4, "layers": 3, "max_iter": 8, "tol": 1e-3,
              "init_cg_iter": 5, "dc_exact_iter": 10, "lr_steps": 2}

    def cfg(out):
        c = tiny_config(out, max_steps=6, checkpoint_every=3, lam_lr=1e-2)
        c["model"] = model
        c["data"]["shape"] = [24, 24]
        return validate_config(c)

    ref = Trainer(cfg(tmp_path / "ref"))
    ref.fit()
    with pytest.raises(KeyboardInterrupt):
        _InterruptTrainer(cfg(tmp_path / "cut")).fit()
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 3
    Trainer(cfg(tmp_path / "cut"), resume=True).fit()
    a, b = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    for key in a["model_state"]:
        assert torch.allclose(a["model_state"][key], b["model_state"][key], rtol=0, atol=1e-6), key


def test_health_monitor_nonconverged_guard_and_reset():
    tcfg = {"residual_limit": 1.0, "lipschitz_limit": 1.0, "lipschitz_patience": 2, "nonconverged_patience": 2}
    health = HealthMonitor("mol-sn", tcfg)
    assert not health.watches_lipschitz and HealthMonitor("mol-lr", tcfg).watches_lipschitz
    assert health.check({"converged_frac": 0.0}) is None
    assert "no slice converged" in health.check({"converged_frac": 0.0})
    health.reset()
    assert health.check({"converged_frac": 0.0}) is None
    assert health.check({"converged_frac": 0.5}) is None and health.nonconverged_bad == 0
    assert "diverged" in health.check({"final_residual": float("nan")})


def test_penalty_after_data_gives_the_joint_gradient(tmp_path):
    """``train.penalty_backward: after_data`` backpropagates MOL-LR's penalty on its own after the data term: the
    same loss and, to rounding, the same gradient as one joint backward (the penalty is active and large here,
    so a dropped or doubled penalty gradient would fail)."""
    model = {"method": "mol-lr", "dims": "2d", "channels": 4, "layers": 3, "max_iter": 8, "tol": 1e-3,
             "lr_steps": 2, "lr_weight": 1e-2, "lr_threshold": 0.05, "lr_clip": None, "lr_jacobian_steps": 2}
    runs = {}
    for mode in ("joint", "after_data"):
        cfg = tiny_config(tmp_path / mode, max_steps=2, grad_clip=None, penalty_backward=mode)
        cfg["model"] = dict(model)
        cfg["data"]["shape"] = [24, 24]
        trainer = Trainer(validate_config(cfg))
        trainer.setup()
        batch = next(iter(trainer.loader))
        logs = trainer.train_step(batch)
        runs[mode] = (logs, {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    (joint, g_joint), (after, g_after) = runs["joint"], runs["after_data"]
    assert joint["extra_loss"] > 0.1 * joint["mse"]
    assert after["loss"] == pytest.approx(joint["loss"], rel=1e-6)
    assert after["lipschitz"] == pytest.approx(joint["lipschitz"], rel=1e-6)
    assert set(g_after) == set(g_joint) and g_joint
    for name in g_joint:
        torch.testing.assert_close(g_after[name], g_joint[name], rtol=1e-4, atol=1e-7, msg=name)
    with pytest.raises(InputError, match="penalty_backward must be joint or after_data"):
        tiny_config(tmp_path / "bad", penalty_backward="later")


# -- best.pt under train.best_requires_monotone ---------------------------------------------------------------------
def _monotone_rule_config(out: Path, method: str, check: bool, **model) -> dict:
    cfg = tiny_config(out, max_steps=4, checkpoint_every=2)
    cfg["train"]["best_requires_monotone"] = check
    cfg["model"] = {"method": method, "architecture": "residual", "dims": "2d", "channels": 4, "layers": 3,
                    "max_iter": 8, "tol": 1e-3, "init_cg_iter": 5, "dc_exact_iter": 10, "lr_steps": 2, **model}
    cfg["data"].update(shape=[24, 24], num_train=2, num_val=2)
    cfg["train"]["val_every"] = 1
    return validate_config(cfg)


def _val_rows(out: Path) -> list[dict]:
    with open(out / "val_log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_best_requires_monotone_leaves_training_alone_and_writes_best_only_below_one(tmp_path, capsys):
    """The rule's certificates change nothing in training (the same weights to the bit), its ``val_lipschitz`` is
    the certificate's figure where ``H`` acts at the validation items, and ``best.pt`` is written only where that
    is below 1: a residual ``H`` starting at 0.9 x is, one whose N starts large is not."""
    plain = Trainer(_monotone_rule_config(tmp_path / "plain", "mol-lr", False))
    plain.fit()
    checked = Trainer(_monotone_rule_config(tmp_path / "checked", "mol-lr", True))
    checked.fit()
    a, b = load_checkpoint(tmp_path / "plain" / "last.pt"), load_checkpoint(tmp_path / "checked" / "last.pt")
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    rows_plain, rows = _val_rows(tmp_path / "plain"), _val_rows(tmp_path / "checked")
    assert [r["val_psnr"] for r in rows] == [r["val_psnr"] for r in rows_plain]
    assert rows_plain[-1]["val_lipschitz"] == "" and len(rows) >= 2
    lips = [float(r["val_lipschitz"]) for r in rows]
    assert all(0.5 < v < 1 for v in lips), lips
    # the figure is the certificate's at the largest item, recomputed here from the final weights
    model = checked.model.eval()
    by_item = []
    for i in range(len(checked.val_set)):
        batch = collate([checked.val_set[i]])
        physics = physics_from_batch(batch)
        x = model(batch["kspace"], physics) * model.last_info.extra["kspace_scale"]
        by_item.append(model.certificate(physics, x=x)["L"])
    assert lips[-1] == pytest.approx(max(by_item), rel=1e-5)
    assert (tmp_path / "checked" / "best.pt").exists()

    loose = Trainer(_monotone_rule_config(tmp_path / "loose", "deq", True, residual_init_gain=3.0))
    loose.fit()
    assert all(float(r["val_lipschitz"]) > 1 for r in _val_rows(tmp_path / "loose"))
    assert not (tmp_path / "loose" / "best.pt").exists() and (tmp_path / "loose" / "last.pt").exists()
    assert "best.pt was not written" in capsys.readouterr().out
    # a better PSNR above 1 keeps the earlier checkpoint under the rule, and replaces it without
    assert not becomes_best({"val_psnr": 30.0, "val_lipschitz": 1.001}, 29.0, True)
    assert becomes_best({"val_psnr": 30.0, "val_lipschitz": 1.001}, 29.0, False)
    assert becomes_best({"val_psnr": 30.0, "val_lipschitz": 0.999}, 29.0, True)
    assert not becomes_best({"val_psnr": 28.0, "val_lipschitz": 0.5}, 29.0, True)
    assert not becomes_best({"val_psnr": 30.0, "val_lipschitz": 0.985}, 29.0, True, below=0.98)  # a margin
    cfg = _monotone_rule_config(tmp_path / "margin", "mol-lr", True)
    cfg["train"]["best_lipschitz_below"] = 0.5  # the tiny model starts at 0.9: no checkpoint qualifies
    Trainer(validate_config(cfg)).fit()
    assert not (tmp_path / "margin" / "best.pt").exists() and "Lip(H) < 0.5" in capsys.readouterr().out
    with pytest.raises(InputError, match="best_lipschitz_below is the threshold"):
        tiny_config(tmp_path / "alone", best_lipschitz_below=0.9)
    with pytest.raises(InputError, match=r"best_lipschitz_below must be a number in \(0, 1\]"):
        cfg["train"]["best_lipschitz_below"] = 1.5
        validate_config(cfg)
    with pytest.raises(InputError, match="best_requires_monotone needs a MOL model"):
        tiny_config(tmp_path / "modl", best_requires_monotone=True)
    with pytest.raises(InputError, match="best_requires_monotone must be true or false"):
        _monotone_rule_config(tmp_path / "bad", "mol-lr", "yes")
