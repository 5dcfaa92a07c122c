"""Training for every learned model: configs, the trainer and losses (checkpoints are in :mod:`molrecon.weights`).

>>> from molrecon.train import load_config, Trainer
>>> cfg = load_config("configs/tiny_2d.yaml", ["out_dir=runs/tiny"])   # doctest: +SKIP
>>> Trainer(cfg).fit()                                                  # doctest: +SKIP
"""

from .config import DEFAULTS, apply_overrides, load_config, validate_config
from .losses import mse_magnitude, training_loss
from .trainer import ResumableSampler, Trainer, TrainingDivergedError, build_datasets, seed_everything, train

__all__ = [
    "Trainer", "train", "TrainingDivergedError", "ResumableSampler", "build_datasets", "seed_everything",
    "load_config", "validate_config", "apply_overrides", "DEFAULTS",
    "mse_magnitude", "training_loss",
]
