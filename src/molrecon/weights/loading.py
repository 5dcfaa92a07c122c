"""Load a learned model for reconstruction from a training checkpoint or a shipped pretrained name.

Every model family goes through one weights check (:func:`molrecon.weights.checkpoint.check_state_dict`): the
tensors must be exactly the model's (names and shapes, each mismatch named) and finite, so a diverged or
foreign file is refused with the tensor that is wrong instead of producing an all-NaN image.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from .checkpoint import load_model_from_checkpoint
from .pretrained import load_pretrained


def load_learned_model(method: str | None = None, checkpoint: str | Path | None = None,
                       pretrained: str | None = None, map_location: str = "cpu") -> torch.nn.Module:
    """Return an eval-mode model from ``checkpoint`` or ``pretrained``; check it is ``method`` when given."""
    if (checkpoint is None) == (pretrained is None):
        raise InputError("give exactly one of a checkpoint or a pretrained model name")
    if pretrained is not None:
        model = load_pretrained(pretrained)
    else:
        model = load_model_from_checkpoint(checkpoint, map_location=map_location)
    name = getattr(model, "method_name", None)
    if method is not None and name != method:
        raise InputError(f"{checkpoint or pretrained} holds a {name!r} model, not {method!r}")
    return model.eval()
