r"""One trainer for every learned model (MOL-SN, MOL-LR, the DEQ baseline, MoDL).

Loop: for each batch, ``x̂ = model(y, physics)``; loss = MSE of magnitudes (+ ``model.extra_loss``, e.g. the
MOL-LR Lipschitz barrier); AdamW step with its own learning rate for λ; cosine schedule; gradient clipping.
Validation (PSNR/SSIM on magnitudes, data range = ``max_value``, fastMRI style) every ``val_every`` epochs;
checkpoints (``last.pt`` every ``checkpoint_every`` steps and at the end, ``best.pt`` at the best validation
PSNR, among the checkpoints monotone at every validation item with ``best_requires_monotone``:
:mod:`molrecon.train.validation`) are written atomically and hold everything an exact resume needs.

Exact resume. The batch order comes from :class:`ResumableSampler`: a permutation drawn from a generator seeded
by ``(seed, epoch)``, so the position inside an epoch is fully described by ``(epoch, epoch_samples)`` (global
samples consumed) and a resumed run skips the samples already consumed. The DataLoader gets its own generator
(re-seeded per epoch), so creating an iterator never consumes the global RNG, whose state (torch, CUDA, numpy,
python) is saved and restored.
Together with the model, AdamW and scheduler states, a run killed at any point and resumed from ``last.pt``
reproduces the uninterrupted run's weights bitwise (on the same machine and thread count).

Divergence. A non-finite loss/gradient/weight, a MOL forward whose final relative residual exceeds
``residual_limit``, a MOL-LR Lipschitz estimate above ``lipschitz_limit`` for ``lipschitz_patience`` consecutive
steps, or (optionally) ``nonconverged_patience`` steps in a row where no slice converged, stops training with
a :class:`TrainingDivergedError` naming the step and the reason, or (``on_divergence: rollback``) reloads the last
good checkpoint and lowers the learning rate by ``rollback_lr_factor`` (at most ``max_rollbacks`` times). A bad
state is never written: checkpoints are only taken after healthy steps and ``save_checkpoint`` refuses NaN/Inf.

Distributed training (``torchrun --nproc_per_node=N -m molrecon train CONFIG``, see
:mod:`molrecon.distributed` and ``docs/distributed.md``) plugs in at :meth:`Trainer._init_distributed`
(process group from the torchrun environment, gloo on CPU / nccl on GPU), :meth:`Trainer._wrap_model` (DDP),
:meth:`Trainer._build_sampler` (rank ``r`` takes positions ``r, r+W, ...`` of the epoch's permutation) and
:meth:`Trainer._reduce` (validation numbers); logs, progress bar and checkpoints are rank 0's. The position in
an epoch is kept as *global* samples consumed (``epoch_samples``), so a run resumes on any world size. Every
decision that changes control flow (non-finite loss, divergence guards) is taken on numbers reduced over the
ranks, so all ranks always take the same branch.

Layout. What stands apart from the loop is apart: the checkpoints (what a training checkpoint holds, start and
resume, ``train.init_from``) in :mod:`molrecon.train.checkpoints`, datasets, batch order and seeds in
:mod:`molrecon.train.datasets`, the CSV logs in :mod:`molrecon.train.logs`, configs, losses, the divergence guards
in :mod:`molrecon.train.health` and checkpoint files in :mod:`molrecon.weights`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..data import collate, physics_from_batch
from ..distributed import (
    all_reduce_logs,
    all_reduce_weighted_mean,
    all_true,
    average_over_ranks,
    barrier,
    cleanup,
    init_distributed,
    wrap_ddp,
)
from ..errors import ConvergenceError, InputError
from ..io import atomic_write
from ..metrics import PSNR_WHOLE_IMAGE
from ..models.factory import build_model, model_config
from .checkpoints import CheckpointingMixin
from .config import validate_config
from .datasets import DIMS_OF_KIND_ALIAS, ResumableSampler, build_datasets, seed_everything, to_device
from .fixed_point_cache import FixedPointCache, IndexedDataset
from .health import HealthMonitor
from .logs import PRETRAIN_COLUMNS, TRAIN_COLUMNS, VAL_COLUMNS, CSVLog, info_logs, lam_of
from .losses import penalty_loss, training_loss
from .pretrain import pretrain_prior
from .validation import becomes_best, validate_model


class TrainingDivergedError(ConvergenceError):
    """Training produced NaN/Inf or a diverging forward; the last good checkpoint was kept."""


# -- helpers -----------------------------------------------------------------------------------------------------
def is_lam_param(name: str) -> bool:
    """λ-like parameters (data-consistency weights) get their own learning rate and no weight decay."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf in ("lam", "log_lam", "lam_raw", "lambda_", "log_lambda")


# -- the trainer ------------------------------------------------------------------------------------------------
class Trainer(CheckpointingMixin):
    """Train the model described by a validated config (see :mod:`molrecon.train.config`).

    Parameters
    ----------
    config: complete config (``validate_config`` / ``load_config`` output).
    resume: continue from ``out_dir/last.pt`` if it exists (exactly, see the module docstring).
    overwrite: allow starting afresh in an ``out_dir`` that already holds a checkpoint.
    train_dataset, val_dataset: ready datasets instead of the ``data`` section (tests, notebooks).
    """

    def __init__(self, config: dict[str, Any], resume: bool = False, overwrite: bool = False,
                 train_dataset: Dataset | None = None, val_dataset: Dataset | None = None) -> None:
        self.config = validate_config(config)
        self.tcfg, self.dcfg = self.config["train"], self.config["data"]
        self.out_dir = Path(self.config["out_dir"])
        self.resume, self.overwrite = resume, overwrite
        self._given = (train_dataset, val_dataset)
        self.rank, self.world_size = self._init_distributed()
        self.is_main = self.rank == 0
        self.step = self.epoch = self.epoch_step = 0
        self.epoch_samples = 0  # global samples of the current epoch already consumed (all ranks together)
        self.rollbacks = 0
        self.best_psnr = -math.inf
        self.last_val: dict[str, float] = {}
        self.last_logs: dict[str, float] = {}
        self.health = HealthMonitor(self.config["model"]["method"], self.tcfg)

    # -- distributed hooks ------------------------------------------------------------------------------------------
    def _init_distributed(self) -> tuple[int, int]:
        """Resolve the device and, under ``torchrun`` (``WORLD_SIZE > 1``), join the process group.

        Backend gloo on CPU, nccl on CUDA (each rank on ``cuda:LOCAL_RANK``). Returns ``(rank, world_size)``.
        """

        self.dist_info = init_distributed(self.config["device"])
        self.device = self.dist_info.device
        return self.dist_info.rank, self.dist_info.world_size

    def close(self) -> None:
        """Leave the process group if this trainer created it (no-op on one process)."""

        cleanup(self.dist_info)

    def _wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The one place where the model is wrapped for training: DDP on several processes.

        DDP averages the gradients over ranks in backward; the unwrapped ``self.model`` stays the reference for
        state dicts, validation and ``extra_loss`` (DDP broadcast rank 0's weights at construction).
        """

        return wrap_ddp(model, self.device)

    def _build_sampler(self, dataset: Dataset) -> ResumableSampler:
        return ResumableSampler(len(dataset), seed=self.tcfg["seed"], shuffle=True, rank=self.rank,
                                world_size=self.world_size)

    def _reduce(self, values: dict[str, float], count: int) -> dict[str, float]:
        """Combine per-rank validation means, weighted by the ``count`` slices each rank validated."""

        means = [c for c in VAL_COLUMNS if c not in ("step", "epoch", "val_lipschitz")]  # that one: the max
        return all_reduce_weighted_mean(values, count, means)

    # -- setup ------------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        seed_everything(self.tcfg["seed"], self.tcfg["deterministic"])

        if self._given[0] is not None:
            self.train_set, self.val_set = self._given
        else:
            self.train_set, self.val_set = build_datasets(self.dcfg, seed=self.tcfg["seed"])
        mcfg = dict(self.config["model"])
        # the CNN must exist before the optimiser is built: give the data's dimensionality if unset
        mcfg.setdefault("dims", DIMS_OF_KIND_ALIAS.get(self.dcfg["kind"], "2d") if self.dcfg["source"] != "synthetic"
                        else "2d")
        self.model = build_model(mcfg).to(self.device)
        if getattr(self.model, "denoiser", True) is None:
            raise InputError(f"model {mcfg['method']!r} has no CNN yet: set model.dims")
        if self.tcfg["init_from"] is not None:
            self._init_weights(self.tcfg["init_from"])
        # kept from construction (not re-read later): MOL.config() reports the current λ, which trains
        self.model_config = model_config(self.model)
        self.method = self.model_config["method"]
        self.health = HealthMonitor(self.method, self.tcfg)
        self.train_model = self._wrap_model(self.model)
        lam_params = [p for n, p in self.model.named_parameters() if is_lam_param(n) and p.requires_grad]
        net_params = [p for n, p in self.model.named_parameters() if not is_lam_param(n) and p.requires_grad]
        self.net_params = net_params
        groups = [{"params": net_params, "lr": self.tcfg["lr"], "weight_decay": self.tcfg["weight_decay"],
                   "name": "net"}]
        if lam_params:
            groups.append({"params": lam_params, "lr": self.tcfg["lam_lr"], "weight_decay": 0.0, "name": "lam"})
        self.optimizer = torch.optim.AdamW(groups, lr=self.tcfg["lr"], weight_decay=self.tcfg["weight_decay"])
        self.sampler = self._build_sampler(self.train_set)
        self.global_batch = self.dcfg["batch_size"] * self.world_size
        self.loader_gen = torch.Generator()
        # only models whose forward takes a start image (MOL, DEQ) use the per-slice fixed-point cache
        self.fp_cache = FixedPointCache() if self.tcfg["fixed_point_cache"] and hasattr(self.model, "initial_image") \
            else None
        loader_set = IndexedDataset(self.train_set) if self.fp_cache is not None else self.train_set
        self.loader = DataLoader(loader_set, batch_size=self.dcfg["batch_size"], sampler=self.sampler,
                                 collate_fn=collate, num_workers=self.dcfg["num_workers"],
                                 generator=self.loader_gen, drop_last=False)
        # = ceil(ceil(N / W) / b): the global batch is b·W slices
        self.batches_per_epoch = math.ceil(len(self.train_set) / self.global_batch)
        if self.tcfg["max_steps"] is not None:
            self.total_steps = int(self.tcfg["max_steps"])
        else:
            self.total_steps = int(self.tcfg["epochs"]) * self.batches_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up then cosine decay to ``min_lr_ratio`` (or constant)."""
        warm = self.tcfg["warmup_steps"]
        if warm and step < warm:
            return (step + 1) / warm
        if self.tcfg["schedule"] == "constant":
            return 1.0
        t = min(1.0, (step - warm) / max(1, self.total_steps - warm))
        r = self.tcfg["min_lr_ratio"]
        return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * t))

    # -- one step ---------------------------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Forward, loss, backward, clip, AdamW step, schedule step. Returns the step's numbers.

        Raises :class:`TrainingDivergedError` (before touching the weights when the loss or gradients are
        non-finite) so the caller can stop or roll back.
        """
        self.model.train()
        batch = to_device(batch, self.device)
        physics = physics_from_batch(batch)
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        cache, warm = self.fp_cache, {}
        if cache is not None:
            x0 = cache.get(batch["index"], "x", physics.spatial_shape, self.device,
                           default=lambda: self.model.initial_image(batch["kspace"], physics))
            warm = {} if x0 is None else {"x0": x0}
        x_hat = self.train_model(batch["kspace"], physics, **warm)
        extra_kwargs = None
        strategy = getattr(self.model, "constraint_strategy", None)
        if cache is not None:
            cache.put(batch["index"], "x", x_hat)
            if strategy is not None:
                points = cache.penalty_points(strategy, batch["index"], tuple(physics.spatial_shape), self.device)
                extra_kwargs = None if points is None else {"warm": points}
        penalty_after = self.tcfg["penalty_backward"] == "after_data"
        loss, logs = training_loss(self.model, x_hat, batch["target"],
                                   batch["max_value"] if self.tcfg["normalize_loss"] else None, extra_kwargs,
                                   with_penalty=not penalty_after)
        for k, v in info_logs(self.model).items():
            logs.setdefault(k, v)  # the penalty's own Lipschitz estimate (MOL-LR) wins over the solver's
        self._check_finite_loss(logs["loss"])
        loss.backward()
        if penalty_after:
            self._penalty_backward(x_hat.detach(), batch, extra_kwargs, logs)
        if extra_kwargs is not None:
            cache.store_penalty_points(strategy, batch["index"], getattr(self.model, "last_lip_points", {}))
        grads = [p.grad for p in self.net_params if p.grad is not None]
        if self.tcfg["grad_clip"]:
            gnorm = torch.nn.utils.clip_grad_norm_(self.net_params, self.tcfg["grad_clip"])
        else:
            gnorm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else torch.zeros(())
        logs["grad_norm"] = float(gnorm)
        if not math.isfinite(logs["grad_norm"]) or any(
                p.grad is not None and not bool(torch.isfinite(p.grad).all())
                for g in self.optimizer.param_groups for p in g["params"]):
            raise TrainingDivergedError(f"non-finite gradient at step {self.step + 1}")
        self.optimizer.step()
        self.scheduler.step()
        if any(not bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise TrainingDivergedError(f"non-finite weights after step {self.step + 1}")
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        lam = lam_of(self.model)
        if lam is not None:
            logs["lam"] = lam
        logs["step_time"] = time.perf_counter() - t0
        logs = self._reduce_logs(logs)
        # MOL-LR safeguard (after the reduction, so every rank rescales by the same worst-case estimate)
        enforce = getattr(self.model, "enforce_lipschitz", None)
        if enforce is not None and logs.get("lipschitz") is not None:
            logs["lipschitz_scale"] = enforce(logs["lipschitz"])
        return logs

    def _check_finite_loss(self, value: float) -> None:
        """Raise on a non-finite loss, agreed by all ranks before a backward (DDP's all-reduce would deadlock
        if one rank stopped alone)."""
        if not self._all_true(math.isfinite(value)):
            raise TrainingDivergedError(f"loss is {value} at step {self.step + 1}"
                                        + (f" (on rank {self.rank} or another)" if self.world_size > 1 else ""))

    def _penalty_backward(self, x_hat: torch.Tensor, batch: dict[str, Any], extra_kwargs: dict | None,
                          logs: dict[str, float]) -> None:
        """``train.penalty_backward: after_data``: the model's penalty at the detached reconstruction, after the
        data term's backward has freed the recorded block, so that their graphs are never live together (the
        exact peak: ``benchmarks/README.md``, "Exact peak"). Its gradients come from ``torch.autograd.grad``,
        averaged over the ranks here (DDP all-reduces only the backward of its own forward), and are added to
        the data term's: the same gradient as one joint backward, summed in another order."""
        penalty, pen_logs = penalty_loss(self.model, x_hat, batch["target"], extra_kwargs)
        logs.update(pen_logs)  # the penalty's own Lipschitz estimate (MOL-LR) wins over the solver's
        logs["loss"] += pen_logs.get("extra_loss", 0.0)
        self._check_finite_loss(logs["loss"])
        if not (isinstance(penalty, torch.Tensor) and penalty.requires_grad):
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(penalty, params, allow_unused=True)
        grads = average_over_ranks(grads)
        for p, g in zip(params, grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad.add_(g)

    def _all_true(self, flag: bool) -> bool:
        return all_true(flag) if self.world_size > 1 else flag

    def _reduce_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """Step numbers over all ranks: means (the loss of the global batch), worst case for the guards.

        The divergence guards (:meth:`check_health`) then see the same numbers on every rank.
        """
        if self.world_size == 1:
            return logs

        return all_reduce_logs(logs, max_keys=("final_residual", "lipschitz", "step_time", "lipschitz_penalty"))

    def check_health(self, logs: dict[str, float]) -> str | None:
        """Return why the step counts as diverging, or ``None`` when it is healthy (:class:`HealthMonitor`)."""
        return self.health.check(logs)

    # -- validation -------------------------------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Mean PSNR / SSIM / NMSE over the validation slices (magnitude, data range = ``max_value``), and with
        ``train.best_requires_monotone`` the largest ``Lip(H)`` at them (:mod:`molrecon.train.validation`)."""
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        self.model.eval()
        # each rank validates the slices rank, rank+W, ...; _reduce weights the means by the slice counts
        val_set = self.val_set if self.world_size == 1 else \
            Subset(self.val_set, range(self.rank, len(self.val_set), self.world_size))
        try:
            return validate_model(self.model, val_set, self.device, self._reduce,
                                  self.tcfg["best_requires_monotone"])
        finally:
            self.model.train()

    # -- the loop ---------------------------------------------------------------------------------------------------
    def _rollback(self, reason: str) -> None:
        last = self.out_dir / "last.pt"
        exists = self._last_exists()
        can = (self.tcfg["on_divergence"] == "rollback" and self.rollbacks < self.tcfg["max_rollbacks"]
               and exists)
        if not can:
            kept = f"last good checkpoint kept: {last}" if exists else "no checkpoint was written yet"
            raise TrainingDivergedError(f"training diverged at step {self.step + 1}: {reason}; {kept}")
        rollbacks = self.rollbacks + 1
        self.load_state(self._load_last(), last)
        self.rollbacks = rollbacks
        factor = self.tcfg["rollback_lr_factor"]
        self.scheduler.base_lrs = [lr * factor for lr in self.scheduler.base_lrs]
        for g, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            g["initial_lr"] = base
            g["lr"] = base * self._lr_factor(self.step)
        self.health.reset()
        if self.is_main:
            print(f"warning: {reason} at step {self.step + 1}; rolled back to step {self.step} and scaled the "
                  f"learning rates by {factor}")

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps``; returns the final metrics (last step's logs and last validation)."""
        self.setup()
        self._start()
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.out_dir / "config.yaml", "w") as fh:
                yaml.safe_dump(self.config, fh, sort_keys=False)
            self.train_log = CSVLog(self.out_dir / "train_log.csv", TRAIN_COLUMNS, self.resumed_from)
            self.val_log = CSVLog(self.out_dir / "val_log.csv", VAL_COLUMNS, self.resumed_from)
            self.tb = None
            if self.tcfg["tensorboard"]:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step drops events logged after the checkpoint by the run that was killed.
                purge = self.resumed_from + 1 if self.resumed_from is not None else None
                self.tb = SummaryWriter(str(self.out_dir / "tb"), purge_step=purge)
        if self.resumed_from is None and self.tcfg["pretrain_steps"]:
            self._pretrain()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.model_config["method"],
                   disable=not (self.tcfg["progress"] and self.is_main), dynamic_ncols=True)
        val_every = self.tcfg["val_every"]
        try:
            while self.step < self.total_steps:
                self.sampler.set_epoch(self.epoch, skip=self.epoch_samples)
                self.loader_gen.manual_seed(self.tcfg["seed"] * 1_000_003 + self.epoch * 7919 + self.epoch_samples)
                rolled_back = False
                consumed = 0
                for batch in self.loader:
                    consumed += 1
                    try:
                        logs = self.train_step(batch)
                        reason = self.check_health(logs)
                    except TrainingDivergedError as exc:
                        reason = str(exc)
                    if reason is not None:
                        self._rollback(reason)
                        rolled_back = True
                        break
                    self.step += 1
                    self.epoch_step += 1
                    self.epoch_samples += self.global_batch
                    self.last_logs = logs
                    end_of_epoch = self.epoch_samples >= len(self.train_set)
                    if end_of_epoch:
                        self.epoch += 1
                        self.epoch_step = self.epoch_samples = 0
                    self._log_step(logs)
                    finished = self.step >= self.total_steps
                    if (end_of_epoch and val_every and self.epoch % val_every == 0) or finished:
                        self._validate_and_log()
                    if self.step % self.tcfg["checkpoint_every"] == 0 or finished:
                        self.save("last.pt")
                    bar.update(1)
                    post = {"loss": f"{logs['loss']:.4g}"}
                    if "val_psnr" in self.last_val:
                        post["val_psnr"] = f"{self.last_val['val_psnr']:.2f}"
                    if "fwd_iterations" in logs:
                        post["it"] = f"{logs['fwd_iterations']:.0f}"
                    bar.set_postfix(post, refresh=False)
                    if finished or end_of_epoch:
                        break
                if rolled_back:
                    bar.n = self.step
                    bar.refresh()
                elif consumed == 0:
                    raise InputError(f"the training loader yielded no batch in epoch {self.epoch}")
            if self.is_main and self.tcfg["best_requires_monotone"] and self.best_psnr == -math.inf:
                print(f"warning: no validated checkpoint had Lip(H) < {self.tcfg['best_lipschitz_below']:g} at every "
                      f"validation item; {self.out_dir / 'best.pt'} was not written (train.best_requires_monotone)")
            if self.world_size > 1:
                barrier()  # every rank returns once rank 0 has written the final checkpoint
        finally:
            bar.close()
            if self.is_main:
                self.train_log.close()
                self.val_log.close()
                if self.tb is not None:
                    self.tb.close()
        return {"step": self.step, "epoch": self.epoch, **self.last_logs, **self.last_val,
                "best_val_psnr": self.best_psnr, "psnr_definition": PSNR_WHOLE_IMAGE, "out_dir": str(self.out_dir)}

    def _pretrain(self) -> None:
        """Denoiser pre-training of a MOL model's H (:mod:`molrecon.train.pretrain`), logged to
        ``pretrain_log.csv``; every rank runs the same seeded steps, so the replicas stay identical."""
        if not hasattr(self.model, "prior"):
            raise InputError(f"train.pretrain_steps: {self.method} has no MOL prior to pre-train")
        log = CSVLog(self.out_dir / "pretrain_log.csv", PRETRAIN_COLUMNS, None) if self.is_main else None
        try:
            summary = pretrain_prior(self.model, self.train_set, int(self.tcfg["pretrain_steps"]),
                                     float(self.tcfg["pretrain_lr"]), self.tcfg["seed"], collate, physics_from_batch,
                                     self.device, self.tcfg["grad_clip"], log.write if log else None)
        finally:
            if log is not None:
                log.close()
        self.pretrain_summary = summary
        if self.is_main:
            print("pre-trained H: " + ", ".join(f"{k} {v:.4g}" for k, v in summary.items()))

    def _log_step(self, logs: dict[str, float]) -> None:
        if not self.is_main or self.step % max(1, self.tcfg["log_every"]) != 0:
            return
        self.train_log.write({"step": self.step, "epoch": self.epoch, **logs})
        if self.tb is not None:
            for k, v in logs.items():
                self.tb.add_scalar(f"train/{k}", v, self.step)

    def _validate_and_log(self) -> None:
        val = self.validate()
        if not val:
            return
        self.last_val = val
        if self.is_main:
            self.val_log.write({"step": self.step, "epoch": self.epoch, **val})
            if self.tb is not None:
                for k, v in val.items():
                    self.tb.add_scalar(f"val/{k[4:]}", v, self.step)
        # the same reduced numbers on every rank: best_psnr stays in sync
        if becomes_best(val, self.best_psnr, self.tcfg["best_requires_monotone"], self.tcfg["best_lipschitz_below"]):
            self.best_psnr = val["val_psnr"]
            self.save("best.pt")  # rank 0 only


def train(config: dict[str, Any], resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train from a config dict (validated here); returns the final metrics."""
    trainer = Trainer(config, resume=resume, overwrite=overwrite)
    try:
        return trainer.fit()
    finally:
        trainer.close()
