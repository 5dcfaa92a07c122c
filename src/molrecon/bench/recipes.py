"""The training recipe of a shipped model, as the settings of a benchmark.

Every shipped model's sidecar keeps the training config it came from (``training.config``). A benchmark that
should measure "the shipped MOL-LR recipe" reads it from there instead of repeating its settings, so that it
follows whatever is shipped. The network's size (``dims``, ``channels``, ``layers``) is left to the benchmark,
which sets it the same for every method.

Example::

    method, model, train = recipe_sections("mol-lr-2d-4x")   # "mol-lr", {"architecture": "residual", ...}, {...}
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from ..names import METHODS
from ..weights.pretrained import pretrained_info

#: Keys of a model section that a benchmark sets itself.
SIZE_KEYS = ("dims", "channels", "layers")


def recipe_sections(name: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(method, model section without method and SIZE_KEYS, train section)`` of the shipped model ``name``'s
    training config; :class:`InputError` for an unknown name or a model shipped without its config."""
    info = pretrained_info(name)
    config = (info.get("training") or {}).get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise InputError(f"pretrained model {name!r} records no training config: it has no recipe to benchmark")
    model = {k: v for k, v in config["model"].items() if k not in SIZE_KEYS}
    method = model.pop("method")
    return method, model, dict(config.get("train") or {})


def recipe_settings(names: list[str], methods: list[str], what: str
                    ) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The model settings per method of the shipped models ``names`` (without the iteration count, which the
    sweep sets), and the MOL-LR recipe's ``train.penalty_backward`` (``None`` without one). Each recipe must be of one
    of ``methods`` and no method may have two."""
    settings: dict[str, dict[str, Any]] = {}
    penalty_backward = None
    for name in names:
        method, model, train = recipe_sections(name)
        if method not in methods:
            raise InputError(f"{what}: --recipe {name} is a {method} recipe, but --methods is {' '.join(methods)}")
        if method in settings:
            raise InputError(f"{what}: two --recipe of method {method}")
        model.pop(METHODS[method].iterations_key or "", None)
        settings[method] = model
        if method == "mol-lr":
            penalty_backward = train.get("penalty_backward")
    return settings, penalty_backward


__all__ = ["SIZE_KEYS", "recipe_sections", "recipe_settings"]
