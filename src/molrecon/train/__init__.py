"""Training for every learned model: configs, the trainer, losses and safe checkpoints.

>>> from molrecon.train import load_config, Trainer
>>> cfg = load_config("configs/tiny_2d.yaml", ["out_dir=runs/tiny"])   # doctest: +SKIP
>>> Trainer(cfg).fit()                                                  # doctest: +SKIP
"""

from .checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_model_from_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .config import DEFAULTS, apply_overrides, load_config, validate_config
from .losses import mse_magnitude, training_loss
from .trainer import ResumableSampler, Trainer, TrainingDivergedError, build_datasets, seed_everything, train

__all__ = [
    "Trainer", "train", "TrainingDivergedError", "ResumableSampler", "build_datasets", "seed_everything",
    "load_config", "validate_config", "apply_overrides", "DEFAULTS",
    "save_checkpoint", "load_checkpoint", "load_model_from_checkpoint", "capture_rng_state", "restore_rng_state",
    "mse_magnitude", "training_loss",
]
