"""Training configuration: YAML files (read with ``yaml.safe_load``), defaults and ``--set key.sub=value``.

A config is a plain nested dict with the sections

``model``  ``method`` (``mol-sn``, ``mol-lr``, ``deq``, ``modl``) and the model's keyword arguments;
``data``   ``source`` (``builtin``, ``files`` or ``synthetic``), ``kind``, ``root``, ``acceleration``,
           ``center_fraction``, ``batch_size``, ``num_workers``, ``limit_train``, ``limit_val``, ...;
``train``  ``epochs`` or ``max_steps``, ``lr``, ``lam_lr``, ``weight_decay``, ``schedule``, ``grad_clip``,
           ``checkpoint_every``, ``val_every``, ``seed``, ``deterministic``, divergence guards, ...;
``out_dir`` where checkpoints and logs go.

Only plain YAML types are accepted (no Python tags), so a config never runs code.
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..names import DIMS, DIMS_OF_KIND, FIXED_POINT_METHODS, LEARNED_METHODS
from ..solvers.backward import BACKWARD_MODES

#: Every key the trainer understands, with its default. Unknown keys in ``data``/``train`` are an error
#: (a typo must not silently fall back to a default); ``model`` keys go to the model constructor.
DEFAULTS: dict[str, Any] = {
    "name": None,
    "out_dir": "runs/default",
    "device": "cpu",
    "model": {"method": "mol-lr"},
    "data": {
        "source": "builtin",          # builtin | files | synthetic
        "kind": "2d",                 # 2d | 3d | dynamic | radial | radial-dynamic (built-in data)
        "root": None,                 # built-in data folder (default of molrecon.data)
        "train_path": None,           # source: files
        "val_path": None,
        "mask": "random",             # random | equispaced | poisson (3d)
        "acceleration": 4.0,
        "center_fraction": 0.08,
        "spokes": None,               # radial kinds: spokes per frame (null: the kind's default, 32 for radial)
        "batch_size": 1,
        "num_workers": 0,
        "limit_train": None,          # use only the first N training slices (tiny runs)
        "limit_val": None,
        "shape": [64, 64],            # source: synthetic
        "num_coils": 4,               # source: synthetic
        "num_train": 8,               # source: synthetic
        "num_val": 2,                 # source: synthetic
    },
    "train": {
        "epochs": 1,
        "max_steps": None,            # if set, overrides epochs (training stops after this many steps)
        "lr": 1e-3,
        "lam_lr": 1.0,                # own learning rate for λ (the MOL authors use 1.0 with 1e-3 for the CNN)
        "weight_decay": 0.0,
        "schedule": "cosine",         # cosine | constant
        "warmup_steps": 0,
        "min_lr_ratio": 0.05,         # cosine ends at lr * min_lr_ratio
        "grad_clip": 1.0,             # max global norm of the CNN gradients (null: no clipping)
        "loss": "mse_magnitude",
        "normalize_loss": True,       # divide the MSE of each slice by its max_value² (scale-free)
        "checkpoint_every": 100,      # steps
        "val_every": 1,               # epochs (0: only at the end)
        "log_every": 1,               # steps (CSV / TensorBoard)
        "seed": 0,
        "deterministic": True,
        "tensorboard": True,
        "progress": True,
        "on_divergence": "stop",      # stop | rollback (reload last good checkpoint, lower lr once)
        "rollback_lr_factor": 0.5,
        "max_rollbacks": 1,
        "lipschitz_limit": 1.0,       # MOL-LR: estimate above this ...
        "lipschitz_patience": 5,      # ... for this many consecutive steps = diverging
        "residual_limit": 1.0,        # MOL: final relative residual above this = diverging forward
        "nonconverged_patience": None,  # stop after this many consecutive steps with no slice converged
        "amp": False,
        "pretrain_steps": 0,          # MOL: denoiser pre-training of H under its constraint (train/pretrain.py)
        "pretrain_lr": 1e-3,
        "fixed_point_cache": False,   # MOL/DEQ: warm-start each slice from its last fixed point
        "penalty_backward": "joint",  # joint | after_data: the penalty's backward after the data term's (less memory)
        "init_from": None,            # start from these weights (checkpoint path or shipped model name)
        "best_requires_monotone": False,  # MOL: best.pt only where Lip(H) < 1 at every validation item ...
        "best_lipschitz_below": 1.0,  # ... or below this margin (validation items are not other images)
    },
}

#: ``train.penalty_backward``: the penalty with the data loss's backward, or in its own backward after it
PENALTY_BACKWARDS = ("joint", "after_data")

_FREE_SECTIONS = ("model",)


_EXP_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _fix_numbers(value: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-3`` (no dot) as a string; read such strings as floats, as users mean."""
    if isinstance(value, str) and _EXP_FLOAT.match(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: _fix_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fix_numbers(v) for v in value]
    return value


def parse_scalar(text: str) -> Any:
    """A command-line value as a YAML scalar (``1e-3`` → float, ``true`` → bool, ``null`` → None, ``[1,2]``)."""
    try:
        return _fix_numbers(yaml.safe_load(text)) if text.strip() != "" else ""
    except yaml.YAMLError:
        return text


def set_key(config: dict, dotted: str, value: Any) -> None:
    """Set ``config["a"]["b"] = value`` for ``dotted = "a.b"``, creating sections as needed."""
    parts = [p for p in dotted.split(".") if p]
    if not parts:
        raise InputError(f"--set: empty key in {dotted!r}")
    if len(parts) == 1 and isinstance(DEFAULTS.get(parts[0]), dict) and not isinstance(value, dict):
        example = next(iter(DEFAULTS[parts[0]]))
        raise InputError(f"--set {dotted}={value!r}: {parts[0]!r} is a section, not a value; set one of its keys, "
                         f"e.g. --set {parts[0]}.{example}=...")
    node = config
    for p in parts[:-1]:
        if p not in node or node[p] is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise InputError(f"--set {dotted}: {p!r} is a value, not a section")
        node = node[p]
    node[parts[-1]] = value


def apply_overrides(config: dict, overrides: list[str] | None) -> dict:
    """Apply ``["train.lr=1e-4", "out_dir=runs/x"]`` (values parsed as YAML scalars); returns a new dict."""
    config = copy.deepcopy(config)
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        set_key(config, key.strip(), parse_scalar(text))
    return config


def _merge(defaults: dict, user: dict, where: str) -> dict:
    out = copy.deepcopy(defaults)
    for key, value in user.items():
        if key in defaults and isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise InputError(f"{where}: section {key!r} must be a mapping, got {type(value).__name__}")
            if key in _FREE_SECTIONS:
                out[key] = {**defaults[key], **copy.deepcopy(value)}
            else:
                unknown = sorted(set(value) - set(defaults[key]))
                if unknown:
                    raise InputError(f"{where}: unknown key(s) {', '.join(f'{key}.{u}' for u in unknown)} "
                                     f"(known: {', '.join(sorted(defaults[key]))})")
                out[key] = {**defaults[key], **copy.deepcopy(value)}
        elif key in defaults:
            out[key] = copy.deepcopy(value)
        else:
            raise InputError(f"{where}: unknown top-level key {key!r} (known: {', '.join(sorted(defaults))})")
    return out


def validate_config(config: dict, where: str = "config") -> dict:
    """Fill defaults and check types and ranges; returns the complete config (a new dict)."""
    if not isinstance(config, dict):
        raise InputError(f"{where}: expected a mapping at top level, got {type(config).__name__}")
    cfg = _merge(DEFAULTS, config, where)
    method = cfg["model"].get("method")
    if method not in LEARNED_METHODS:
        raise InputError(f"{where}: model.method must be one of {', '.join(LEARNED_METHODS)}; got {method!r}")
    t, d = cfg["train"], cfg["data"]
    if t["max_steps"] is None and (not isinstance(t["epochs"], int) or t["epochs"] < 1):
        raise InputError(f"{where}: train.epochs must be a positive integer (or set train.max_steps)")
    if t["max_steps"] is not None and (not isinstance(t["max_steps"], int) or t["max_steps"] < 1):
        raise InputError(f"{where}: train.max_steps must be a positive integer, got {t['max_steps']!r}")
    for key in ("lr", "lam_lr"):
        if not isinstance(t[key], (int, float)) or isinstance(t[key], bool) or t[key] < 0:
            raise InputError(f"{where}: train.{key} must be a non-negative number, got {t[key]!r}")
    if t["schedule"] not in ("cosine", "constant"):
        raise InputError(f"{where}: train.schedule must be 'cosine' or 'constant', got {t['schedule']!r}")
    if t["on_divergence"] not in ("stop", "rollback"):
        raise InputError(f"{where}: train.on_divergence must be 'stop' or 'rollback', got {t['on_divergence']!r}")
    if t["loss"] != "mse_magnitude":
        raise InputError(f"{where}: train.loss must be 'mse_magnitude', got {t['loss']!r}")
    if t["amp"]:
        raise InputError(f"{where}: train.amp=true is not supported (fixed-point solvers need float32)")
    if not isinstance(t["fixed_point_cache"], bool):
        raise InputError(f"{where}: train.fixed_point_cache must be true or false, got {t['fixed_point_cache']!r}")
    if t["best_requires_monotone"] is True and method not in FIXED_POINT_METHODS:
        raise InputError(f"{where}: train.best_requires_monotone needs a MOL model with a Lipschitz figure "
                         f"({', '.join(FIXED_POINT_METHODS)}); {method} has none")
    if t["best_lipschitz_below"] != 1.0 and t["best_requires_monotone"] is not True:
        raise InputError(f"{where}: train.best_lipschitz_below is the threshold of train.best_requires_monotone; "
                         f"set that to true as well")
    if not isinstance(t["checkpoint_every"], int) or t["checkpoint_every"] < 1:
        raise InputError(f"{where}: train.checkpoint_every must be a positive integer")
    if t["init_from"] is not None and (not isinstance(t["init_from"], str) or not t["init_from"].strip()):
        raise InputError(f"{where}: train.init_from must be a checkpoint path or a shipped model name, "
                         f"got {t['init_from']!r}")
    if not isinstance(t["seed"], int):
        raise InputError(f"{where}: train.seed must be an integer, got {t['seed']!r}")
    if d["source"] not in ("builtin", "files", "synthetic"):
        raise InputError(f"{where}: data.source must be builtin, files or synthetic; got {d['source']!r}")
    if d["source"] == "files" and not d["train_path"]:
        raise InputError(f"{where}: data.source=files needs data.train_path")
    if not isinstance(d["batch_size"], int) or d["batch_size"] < 1:
        raise InputError(f"{where}: data.batch_size must be a positive integer, got {d['batch_size']!r}")
    for key in ("limit_train", "limit_val"):
        if d[key] is not None and (not isinstance(d[key], int) or d[key] < 1):
            raise InputError(f"{where}: data.{key} must be a positive integer or null, got {d[key]!r}")
    if not cfg["out_dir"] or not isinstance(cfg["out_dir"], str):
        raise InputError(f"{where}: out_dir must be set to a folder name, got {cfg['out_dir']!r}")
    _check_types(cfg, where)
    return cfg


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _POS_INT(v: Any) -> bool:
    return _is_int(v) and v >= 1


def _NONNEG_INT(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _POS_NUM(v: Any) -> bool:
    return _is_num(v) and v > 0


def _NONNEG_NUM(v: Any) -> bool:
    return _is_num(v) and v >= 0


def _BOOL(v: Any) -> bool:
    return isinstance(v, bool)


# (section, key): (test, what it must be, whether null is accepted)
_RULES: dict[tuple[str, str], tuple[Any, str, bool]] = {
    ("data", "acceleration"): (lambda v: _is_num(v) and v >= 1, "a number >= 1", False),
    ("data", "center_fraction"): (lambda v: _is_num(v) and 0 < v < 1, "a number in (0, 1) or null", True),
    ("data", "num_workers"): (_NONNEG_INT, "an integer >= 0", False),
    ("data", "spokes"): (_POS_INT, "a positive integer or null", True),
    ("data", "num_coils"): (_POS_INT, "a positive integer", False),
    ("data", "num_train"): (_POS_INT, "a positive integer", False),
    ("data", "num_val"): (_NONNEG_INT, "an integer >= 0", False),
    ("data", "shape"): (lambda v: isinstance(v, list) and len(v) == 2 and all(_POS_INT(n) for n in v),
                        "a list of 2 positive integers", False),
    ("data", "kind"): (lambda v: v in DIMS_OF_KIND, f"one of {', '.join(DIMS_OF_KIND)}", False),
    ("data", "mask"): (lambda v: v in ("random", "equispaced", "poisson", "variable-density"),
                       "one of random, equispaced, poisson, variable-density", False),
    ("train", "grad_clip"): (_POS_NUM, "a positive number or null", True),
    ("train", "weight_decay"): (_NONNEG_NUM, "a number >= 0", False),
    ("train", "warmup_steps"): (_NONNEG_INT, "an integer >= 0", False),
    ("train", "min_lr_ratio"): (lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]", False),
    ("train", "val_every"): (_NONNEG_INT, "an integer >= 0", False),
    ("train", "log_every"): (_POS_INT, "a positive integer", False),
    ("train", "normalize_loss"): (_BOOL, "true or false", False),
    ("train", "deterministic"): (_BOOL, "true or false", False),
    ("train", "tensorboard"): (_BOOL, "true or false", False),
    ("train", "progress"): (_BOOL, "true or false", False),
    ("train", "best_requires_monotone"): (_BOOL, "true or false", False),
    ("train", "best_lipschitz_below"): (lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]", False),
    ("train", "rollback_lr_factor"): (lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]", False),
    ("train", "max_rollbacks"): (_NONNEG_INT, "an integer >= 0", False),
    ("train", "lipschitz_limit"): (_POS_NUM, "a positive number", False),
    ("train", "lipschitz_patience"): (_POS_INT, "a positive integer", False),
    ("train", "residual_limit"): (lambda v: v == math.inf or _POS_NUM(v), "a positive number (.inf: no limit)",
                                  False),
    ("train", "nonconverged_patience"): (_POS_INT, "a positive integer or null", True),
    ("train", "penalty_backward"): (lambda v: v in PENALTY_BACKWARDS, " or ".join(PENALTY_BACKWARDS), False),
}
#: model keys of every family that are counts / positive sizes (the others go to the constructor as given)
_MODEL_INTS = ("channels", "layers", "K", "cg_iter", "max_iter", "kernel_size", "anderson_m", "dc_exact_iter",
               "init_cg_iter", "backward_steps")
#: model keys that are counts where 0 turns something off (lr_steps = 0: no adversarial term in MOL-LR's penalty)
_MODEL_COUNTS = ("lr_steps",)
_MODEL_NUMS = ("lam", "tol", "alpha", "cg_tol", "init_lam", "lipschitz_target", "lr_clip")


def _check_types(cfg: dict, where: str) -> None:
    """Types and ranges of every value the trainer uses, so a wrong one fails here, before out_dir exists."""
    for (section, key), (ok, what, nullable) in _RULES.items():
        v = cfg[section][key]
        if v is None and nullable:
            continue
        if not ok(v):
            raise InputError(f"{where}: {section}.{key} must be {what}, got {v!r}")
    m = cfg["model"]
    for key in _MODEL_INTS:
        if key in m and not _POS_INT(m[key]):
            raise InputError(f"{where}: model.{key} must be a positive integer, got {m[key]!r}")
    for key in _MODEL_COUNTS:
        if key in m and not _NONNEG_INT(m[key]):
            raise InputError(f"{where}: model.{key} must be an integer >= 0, got {m[key]!r}")
    for key in _MODEL_NUMS:
        if key in m and m[key] is not None and not _POS_NUM(m[key]):
            raise InputError(f"{where}: model.{key} must be a positive number, got {m[key]!r}")
    _check_backward(m, where)
    forcing = m.get("cg_forcing")
    if forcing is not None and not (_is_num(forcing) and 0 <= forcing < 1):
        raise InputError(f"{where}: model.cg_forcing must be a number in [0, 1) or null (0: no forcing), "
                         f"got {forcing!r}")
    if "dims" in m and m["dims"] is not None and m["dims"] not in DIMS:
        raise InputError(f"{where}: model.dims must be one of {', '.join(DIMS)}, got {m['dims']!r}")
    if not isinstance(cfg["device"], str):
        raise InputError(f"{where}: device must be a string such as 'cpu' or 'cuda', got {cfg['device']!r}")


def _check_backward(m: dict, where: str) -> None:
    """``model.backward`` (+ ``backward_steps``, ``backward_damping``, ``backward_cg_iter``): fixed-point methods
    only; absent means ``implicit``, so configs and checkpoints from before the key load unchanged."""
    keys = [k for k in ("backward", "backward_steps", "backward_damping", "backward_cg_iter") if k in m]
    if keys and m.get("method") not in FIXED_POINT_METHODS:
        raise InputError(f"{where}: model.{keys[0]} applies to the fixed-point methods "
                         f"({', '.join(FIXED_POINT_METHODS)}), not {m.get('method')!r}")
    if "backward" in m and m["backward"] not in BACKWARD_MODES:
        raise InputError(f"{where}: model.backward must be one of {', '.join(BACKWARD_MODES)}, got {m['backward']!r}")
    d = m.get("backward_damping", 0.5)
    if not (_is_num(d) and 0 < d <= 1):
        raise InputError(f"{where}: model.backward_damping must be a number in (0, 1], got {d!r}")
    c = m.get("backward_cg_iter")
    if c is not None and not _POS_INT(c):
        raise InputError(f"{where}: model.backward_cg_iter must be a positive integer or null, got {c!r}")


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Read a YAML config with ``yaml.safe_load``, apply ``--set`` overrides, fill defaults and validate."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not a valid YAML config ({str(exc).splitlines()[0]})") from None
    if raw is None or raw == {}:
        # an empty file is a mistake (wrong file, truncated copy), not a request for a default run
        raise InputError(f"{path}: the config is empty; give at least model.method and out_dir (see configs/)")
    raw = _fix_numbers(raw)
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping at top level, got {type(raw).__name__}")
    try:
        config = apply_overrides(raw, overrides)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    return validate_config(config, where=str(path))
