"""Training for every learned model: configs, the trainer and losses (checkpoints are in :mod:`molrecon.weights`).

>>> import tempfile
>>> from molrecon.train import load_config, Trainer
>>> out = tempfile.mkdtemp()
>>> cfg = load_config("configs/tiny_2d.yaml", [f"out_dir={out}", "data.source=synthetic", "data.shape=[16,16]",
...                   "data.num_train=2", "data.num_val=1", "train.max_steps=2", "train.progress=false"])
>>> Trainer(cfg).fit()["step"]
2
"""

from .config import DEFAULTS, apply_overrides, load_config, validate_config
from .datasets import ResumableSampler, build_datasets, seed_everything
from .losses import mse_magnitude, training_loss
from .trainer import Trainer, TrainingDivergedError, train

__all__ = [
    "Trainer", "train", "TrainingDivergedError", "ResumableSampler", "build_datasets", "seed_everything",
    "load_config", "validate_config", "apply_overrides", "DEFAULTS",
    "mse_magnitude", "training_loss",
]
