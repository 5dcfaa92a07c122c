"""The trainer's checkpoints: what a training checkpoint holds, how a run starts or resumes from one, and how it
starts from another model's weights (``train.init_from``).

:class:`CheckpointingMixin` works on :class:`~molrecon.train.trainer.Trainer`'s state (model, optimiser,
scheduler, position in the epoch, fixed-point cache, ranks); an exact resume needs every piece of it, which is why
the pieces are saved and restored together here (``Trainer``'s docstring, "Exact resume").
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch

from ..distributed import broadcast_object
from ..errors import CheckpointError, InputError
from ..models.factory import build_model, model_config
from ..names import FIXED_POINT_METHODS
from ..weights.checkpoint import (
    capture_rng_state,
    check_state_dict,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from ..weights.loading import resolve_model
from .fixed_point_cache import FixedPointCache


def _canonical_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored model config as the model of today's code writes it (older checkpoints may carry keys the code
    now ignores, e.g. every constraint's options); the throw-away build leaves the random state untouched."""
    try:
        with torch.random.fork_rng(devices=[]):
            return model_config(build_model(dict(config)))
    except InputError:
        return config


class CheckpointingMixin:
    """Save, load, resume and start-from-weights for :class:`~molrecon.train.trainer.Trainer` (module docstring)."""

    # -- state ------------------------------------------------------------------------------------------------------
    def state_dict(self, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "model_config": copy.deepcopy(self.model_config),
            "model_state": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            # state outside the state dict that an exact resume needs (e.g. MOL-SN power-iteration vectors)
            "model_extra": {name: m.extra_training_state() for name, m in self.model.named_modules()
                            if hasattr(m, "extra_training_state")},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(),
            "config": copy.deepcopy(self.config),
            "step": self.step, "epoch": self.epoch, "epoch_step": self.epoch_step,
            # world-size independent position in the epoch (global samples consumed), see ResumableSampler
            "epoch_samples": self.epoch_samples, "world_size": self.world_size,
            "global_batch": self.global_batch,
            "rollbacks": self.rollbacks, "best_psnr": float(self.best_psnr),
            **({"fixed_point_cache": self.fp_cache.state_dict()} if self.fp_cache is not None else {}),
            "metrics": {**{k: float(v) for k, v in self.last_logs.items()},
                        **{k: float(v) for k, v in self.last_val.items()}, **(metrics or {})},
        }

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        if _canonical_config(state["model_config"]) != self.model_config:
            raise CheckpointError(f"{path}: the checkpoint's model {state['model_config']} differs from the "
                                  f"config's {self.model_config}")
        for key in ("optimizer", "scheduler", "rng", "step"):
            if key not in state:
                raise CheckpointError(f"{path}: not a training checkpoint (no {key!r}); cannot resume from it")
        self.model.load_state_dict(state["model_state"])
        extra = state.get("model_extra", {})
        for name, m in self.model.named_modules():
            if name in extra and hasattr(m, "load_extra_training_state"):
                m.load_extra_training_state(extra[name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        self.step, self.epoch, self.epoch_step = int(state["step"]), int(state["epoch"]), int(state["epoch_step"])
        if "epoch_samples" in state:
            self.epoch_samples = int(state["epoch_samples"])
        else:  # checkpoints from before distributed training: one process
            self.epoch_samples = self.epoch_step * int(state["config"]["data"]["batch_size"])
        # the same position in steps of the current global batch (differs only when the world size changed)
        self.epoch_step = math.ceil(self.epoch_samples / self.global_batch)
        if self.fp_cache is not None:
            # a checkpoint written without the cache resumes with an empty one (cold starts, same fixed points)
            self.fp_cache = FixedPointCache()
            if "fixed_point_cache" in state:
                self.fp_cache.load_state_dict(state["fixed_point_cache"])
        self.rollbacks = int(state.get("rollbacks", 0))
        self.best_psnr = float(state.get("best_psnr", -math.inf))
        m = state.get("metrics", {})
        self.last_val = {k: v for k, v in m.items() if k.startswith("val_")}

    def save(self, name: str = "last.pt") -> Path | None:
        if not self.is_main:
            return None
        return save_checkpoint(self.out_dir / name, self.state_dict())

    def _last_exists(self) -> bool:
        """Whether ``last.pt`` exists, as rank 0 sees it (``out_dir`` need not be shared between nodes)."""
        exists = (self.out_dir / "last.pt").exists()
        if self.world_size == 1:
            return exists

        return bool(broadcast_object(exists if self.is_main else None))

    def _load_last(self) -> dict[str, Any]:
        """``last.pt`` read by rank 0 and sent to every rank (a read error is raised on every rank)."""
        last = self.out_dir / "last.pt"
        if self.world_size == 1:
            return load_checkpoint(last, map_location=self.device)

        payload: tuple[str, Any] | None = None
        if self.is_main:
            try:
                payload = ("ok", load_checkpoint(last, map_location="cpu"))
            except CheckpointError as exc:
                payload = ("error", str(exc))
        kind, value = broadcast_object(payload)
        if kind == "error":
            raise CheckpointError(value)
        return value

    def _start(self) -> None:
        last = self.out_dir / "last.pt"
        self.resumed_from: int | None = None
        exists = self._last_exists()
        if exists and not self.resume and not self.overwrite:
            raise InputError(f"{self.out_dir} already holds a checkpoint (last.pt); use --resume to continue it, "
                             f"--overwrite to start again, or --set out_dir=...")
        if self.resume and exists:
            self.load_state(self._load_last(), last)
            self.resumed_from = self.step
            if self.tcfg["max_steps"] is None:
                # epochs mode: the steps left depend on the (possibly new) global batch
                n = len(self.train_set)
                left = math.ceil(max(0, n - self.epoch_samples) / self.global_batch) if self.epoch_samples else 0
                full = int(self.tcfg["epochs"]) - self.epoch - (1 if self.epoch_samples else 0)
                self.total_steps = self.step + left + max(0, full) * self.batches_per_epoch
        elif self.resume and self.is_main:
            print(f"no checkpoint in {self.out_dir}; starting from scratch")

    def _init_weights(self, spec: str) -> None:
        """Start from the weights (λ included) of a checkpoint or shipped model of the same architecture, e.g. to
        fine-tune a model under another constraint setting; its training state (optimiser, step) is not taken.
        A resumed run then loads its own ``last.pt`` over them. Fixed-point models (MOL-SN, MOL-LR, DEQ) may start
        from one another when the weights fit, e.g. a MOL-LR from an unconstrained DEQ of the same ``H``."""
        # a throw-away build of the source model must not move the run's random state
        with torch.random.fork_rng(devices=[]):
            source = resolve_model(spec)
        run_method = self.model.method_name
        if source.method != run_method and not {source.method, run_method} <= set(FIXED_POINT_METHODS):
            raise InputError(f"{spec} holds a {source.method!r} model, not {run_method!r}")
        # the residual and the plain H have the same tensors: only the architecture tells them apart
        arch, run_arch = source.model.config().get("architecture"), self.model.config().get("architecture")
        if arch != run_arch:
            raise InputError(f"{spec} holds a {source.method} model with a {arch!r} H, the run's H is {run_arch!r}")
        state = source.model.state_dict()
        check_state_dict(self.model, state, spec)
        self.model.load_state_dict(state)


__all__ = ["CheckpointingMixin"]
