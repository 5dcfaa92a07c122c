"""Weights: training checkpoints, shipped pretrained models (safetensors + JSON sidecar) and model loading.

This layer sits above ``models`` (it rebuilds modules through :func:`molrecon.models.build_model`) and below
``train`` and ``evaluate``, which both read and write weights through it. Nothing here unpickles code: training
checkpoints load with ``torch.load(weights_only=True)``, shipped weights through safetensors.
"""

from .checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_model_from_checkpoint,
    model_from_state,
    restore_rng_state,
    save_checkpoint,
)
from .loading import load_learned_model
from .pretrained import (
    available_names,
    export_pretrained,
    list_pretrained,
    load_pretrained,
    parse_name,
    pretrained_info,
    retune_pretrained,
    save_pretrained,
)

__all__ = [
    "save_checkpoint", "load_checkpoint", "load_model_from_checkpoint", "model_from_state", "capture_rng_state",
    "restore_rng_state", "load_learned_model", "available_names", "export_pretrained", "list_pretrained",
    "load_pretrained", "parse_name", "pretrained_info", "retune_pretrained", "save_pretrained",
]
