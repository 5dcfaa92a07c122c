"""Load a learned model for reconstruction from a training checkpoint or a shipped pretrained name, and the one
resolution of "what model to use" (:func:`resolve_model`) that ``recon``, ``evaluate``, the benchmarks and the
robustness study share.

Every model family goes through one weights check (:func:`molrecon.weights.checkpoint.check_state_dict`): the
tensors must be exactly the model's (names and shapes, each mismatch named) and finite, so a diverged or
foreign file is refused with the tensor that is wrong instead of producing an all-NaN image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..models.factory import build_model
from ..models.mol_settings import SOLVE_OVERRIDES
from ..names import FIXED_POINT_METHODS, LEARNED_METHODS
from .checkpoint import load_model_from_checkpoint
from .pretrained import load_pretrained, pretrained_name


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


#: endings that make a ``--model`` value a checkpoint path even when the file does not exist (yet)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


@dataclass
class ModelChoice:
    """A learned model ready to run: the eval-mode module on its device, its method, where it came from
    (``pretrained:NAME``, ``checkpoint:PATH`` or ``config``), a short label (the pretrained name or the
    checkpoint's stem) and the per-call solver ``overrides`` to run it with (``run(..., **overrides)``)."""

    model: torch.nn.Module
    method: str
    source: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)


def is_checkpoint_spec(spec: str | Path) -> bool:
    """A ``--model`` value names a checkpoint file (rather than a pretrained name) when it is a path: it exists,
    holds a directory separator or ends like a checkpoint (``.pt``, ``.pth``, ``.ckpt``)."""
    text = str(spec)
    return isinstance(spec, Path) or Path(text).exists() or "/" in text or text.endswith(CHECKPOINT_SUFFIXES)


def _checked_overrides(model: torch.nn.Module, method: str, where: str,
                       overrides: dict[str, Any] | None) -> dict[str, Any]:
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if not given:
        return {}
    if not callable(getattr(model, "solve", None)):
        raise InputError(f"{where}: {', '.join(sorted(given))} apply to the fixed-point models "
                         f"({', '.join(FIXED_POINT_METHODS)}); {method} runs a fixed number of steps")
    unknown = sorted(set(given) - set(SOLVE_OVERRIDES))
    if unknown:
        raise InputError(f"{where}: {', '.join(unknown)} are not solver settings of {method} "
                         f"({', '.join(SOLVE_OVERRIDES)})")
    return given


def resolve_model(model: str | Path | None = None, *, checkpoint: str | Path | None = None,
                  pretrained: str | None = None, config: dict[str, Any] | None = None, method: str | None = None,
                  device: str | torch.device = "cpu", overrides: dict[str, Any] | None = None,
                  seed: int = 0) -> ModelChoice:
    """What model to use, from exactly one of:

    - ``model``: ``--model NAME|PATH``: a checkpoint path (:func:`is_checkpoint_spec`), a learned method name
      (``mol-lr``: its shipped ``<method>-2d-4x`` model) or a pretrained name (``mol-lr-2d-4x``);
    - ``checkpoint``: a training checkpoint; ``pretrained``: a shipped name;
    - ``config``: a model config (:func:`molrecon.models.build_model`), built with ``torch.manual_seed(seed)``
      weights (untrained: for timings and tests).

    ``method``, when given, must be the model's method. ``overrides`` (``cg_iter``, ``max_iter``, ``tol``, ...;
    ``None`` values are dropped) are checked against the model here, before anything runs, and returned for
    the calls: the model itself is not modified. The model is moved to ``device`` in eval mode.
    """
    given = [k for k, v in (("model", model), ("checkpoint", checkpoint), ("pretrained", pretrained),
                            ("config", config)) if v is not None]
    if len(given) != 1:
        raise InputError("give exactly one of a model name or path, a checkpoint, a pretrained name or a config"
                         + (f" (got {', '.join(given)})" if given else ""))
    if model is not None:
        if is_checkpoint_spec(model):
            checkpoint = model
        else:
            name = str(model).strip()
            pretrained = pretrained_name(name) if name in LEARNED_METHODS else name
    if config is not None:
        torch.manual_seed(seed)
        module = build_model(config)
        source, label = "config", module.method_name
    elif checkpoint is not None:
        module = load_learned_model(checkpoint=checkpoint, map_location=str(device))
        source, label = f"checkpoint:{checkpoint}", Path(checkpoint).stem
    else:
        module = load_learned_model(pretrained=pretrained)
        source, label = f"pretrained:{pretrained}", str(pretrained)
    name = getattr(module, "method_name", None) or type(module).__name__.lower()
    if method is not None and name != method:
        raise InputError(f"{checkpoint or pretrained or 'the config'} holds a {name!r} model, not {method!r}")
    module = module.to(device).eval()
    return ModelChoice(module, name, source, label, _checked_overrides(module, name, label, overrides))
