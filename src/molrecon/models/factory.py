"""Build any learned model from a plain config dict (what configs, checkpoints and pretrained sidecars store).

``config["method"]`` picks the class; every other key is a constructor keyword:

=========  ==================================================================
``mol-sn``  ``MOL(constraint="sn", ...)``  spectral-normalised CNN (certified)
``mol-lr``  ``MOL(constraint="lr", ...)``  Lipschitz-regularised CNN (estimated)
``deq``     ``MOL(constraint="none", ...)``  the unconstrained DEQ baseline
``modl``    ``MoDL(...)``  unrolled baseline (Aggarwal et al.)
=========  ==================================================================

Other kinds of model join through :func:`register_model` (their class in :data:`MODEL_CLASSES`).

Every model exposes ``config()`` so that ``build_model(model.config())`` rebuilds the same architecture.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from ..names import CONSTRAINT_METHOD, LEARNED_METHODS, METHODS, MethodSpec, register_method, unregister_method
from .modl import MoDL
from .mol import MOL

#: The class of each kind of learned model: fixed-point methods are MOL with their constraint, the others by name.
MODEL_CLASSES: dict[str, type[torch.nn.Module]] = {"modl": MoDL}


def register_model(name: str, cls: type[torch.nn.Module], label: str | None = None, color: str = "k",
                   marker: str = "x", iterations_key: str | None = None) -> None:
    """Add a learned method in one call: its name to the vocabulary (:func:`molrecon.names.register_method`)
    and ``cls`` as its model class.

    ``cls(**config)`` must build it, ``cls.config()`` give that config back and ``method_name`` be ``name``;
    ``forward(y, physics)`` reconstructs. Checkpoints of it then load (:mod:`molrecon.weights`) and every
    path that runs methods (``molrecon recon``, ``molrecon evaluate``, the benchmarks) runs it;
    :func:`unregister_model` removes it again."""
    if name in MODEL_CLASSES:
        raise InputError(f"model method {name!r} is already registered")
    register_method(MethodSpec(name, label or name, "learned", color, marker, iterations_key=iterations_key))
    MODEL_CLASSES[name] = cls


def unregister_model(name: str) -> None:
    """Remove a method added by :func:`register_model`."""
    unregister_method(name)
    MODEL_CLASSES.pop(name, None)


def model_config(model: torch.nn.Module) -> dict[str, Any]:
    """``model.config()`` with ``"method"`` always present (so it can be stored and fed to :func:`build_model`)."""
    cfg = dict(model.config())
    cfg.setdefault("method", model.method_name)
    return cfg


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """Instantiate the model described by ``config`` (``{"method": ..., **kwargs}``; a MOL config that only
    names its ``constraint`` is accepted too)."""
    if not isinstance(config, dict):
        raise InputError(f"model config must be a mapping, got {type(config).__name__}")
    kwargs = dict(config)
    method = kwargs.pop("method", None)
    if method is None and kwargs.get("constraint") in CONSTRAINT_METHOD:
        method = CONSTRAINT_METHOD[kwargs["constraint"]]  # a bare MOL.config() names only its constraint
    if method not in LEARNED_METHODS:
        raise InputError(f"unknown model method {method!r} (known: {', '.join(LEARNED_METHODS)})")
    constraint = METHODS[method].constraint
    if constraint is None:
        cls, extra = MODEL_CLASSES[method], {}
    else:
        given = kwargs.pop("constraint", constraint)
        if given != constraint:
            raise InputError(f"model method {method!r} implies constraint={constraint!r}, but the config says "
                             f"constraint={given!r}")
        cls, extra = MOL, {"constraint": constraint}
    try:
        return cls(**extra, **kwargs)
    except TypeError as exc:
        raise InputError(f"bad model config for {method!r}: {exc}") from None


def build_method(method: str, iterations: int | None = None, **kwargs: Any) -> torch.nn.Module:
    """:func:`build_model` with the iteration count under the method's own name (MoDL's ``K``, MOL's
    ``max_iter``), so that a sweep over iterations treats every method alike."""
    if method in METHODS and iterations is not None:
        key = METHODS[method].iterations_key
        if key is not None:
            kwargs[key] = iterations
    return build_model({"method": method, **kwargs})
