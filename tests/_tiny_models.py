"""Small randomly initialised models and their checkpoints, shared by the evaluation and weights tests
(untrained: for code paths only, never for quality claims)."""

from pathlib import Path

import torch

from molrecon.models.factory import build_model
from molrecon.weights.checkpoint import save_checkpoint

TINY_MODL = {"method": "modl", "K": 2, "dims": "2d", "channels": 8, "layers": 3, "cg_iter": 4}
TINY_MOL_SN = {"method": "mol-sn", "dims": "2d", "channels": 8, "layers": 3, "max_iter": 8, "tol": 1e-3}


def tiny_model(config=TINY_MODL):
    """A small randomly initialised model (untrained: for code paths only, never for quality claims)."""
    torch.manual_seed(0)
    return build_model(dict(config))


def write_checkpoint(path: Path, model, model_config=TINY_MODL) -> Path:
    config = {"model": dict(model_config), "out_dir": str(path.parent), "command": "molrecon train tiny.yaml"}
    return save_checkpoint(path, {"model_state": model.state_dict(), "model_config": dict(model_config),
                                  "config": config, "step": 7, "metrics": {"val_psnr": 12.5}})
