"""Registry of the pretrained models shipped with molrecon.

Each shipped model is a pair of files in ``molrecon/pretrained/`` (or another ``root``):

- ``<name>.safetensors``: the weights (a flat ``str -> tensor`` map; safetensors never executes code on load,
  unlike a pickle);
- ``<name>.json``: the sidecar: the model config that :func:`molrecon.models.build_model` turns into the
  module, the exact training command and config that reproduce the weights, the validation figures reached,
  the SHA-256 of the weights file (checked on every load, so a truncated or swapped file is refused) and the
  machine it was trained on.

Names follow ``<method>-<2d|3d|2dt>-<accel>x`` (``docs/conventions.md``), e.g. ``mol-lr-2d-4x``.

Example
-------
>>> import torch, molrecon
>>> from molrecon.physics import MultiCoilMRI, RandomMask, simulate_coil_maps
>>> model = molrecon.load_pretrained("modl-2d-4x")
>>> model.method_name, model.pretrained_meta["dims"]
('modl', '2d')
>>> physics = MultiCoilMRI(simulate_coil_maps((32, 32), num_coils=4)[None], RandomMask(0.08, 4)((32, 32), seed=0))
>>> model(physics.A(torch.ones(1, 32, 32, dtype=torch.complex64)), physics).shape
torch.Size([1, 32, 32])
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, InputError
from ..io import atomic_path, machine_info, sha256_file, write_json_atomic
from ..models.factory import build_model
from ..names import DIMS_TAG
from ..normalization import Normalization, default_normalization
from .checkpoint import check_state_dict, load_checkpoint, model_from_state

#: Folder of the weights shipped inside the package.
PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
#: Environment variable naming another folder of pretrained pairs (your own exports), used instead.
PRETRAINED_ENV = "MOLRECON_PRETRAINED_DIR"

#: Sidecar format version; bump when the JSON layout changes incompatibly.
FORMAT_VERSION = 1

_NAME_RE = re.compile(r"^(?P<method>[a-z][a-z0-9]*(?:-[a-z][a-z0-9]*)*)-(?P<dims>" + "|".join(DIMS_TAG.values())
                      + r")-(?:(?P<accel>\d+(?:\.\d+)?)x|(?P<trajectory>radial))$")
_DIMS_FROM_TAG = {tag: dims for dims, tag in DIMS_TAG.items()}
# a name is a file stem inside the pretrained folder, never a path (``../x`` must not reach outside it)
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def pretrained_name(method: str, dims: str = "2d", acceleration: float = 4.0) -> str:
    """The shipped name ``<method>-<2d|3d|2dt>-<accel>x`` (``docs/conventions.md``), e.g. ``mol-lr-2d-4x``;
    :func:`parse_name` is its inverse."""
    if dims not in DIMS_TAG:
        raise InputError(f"pretrained name: dims must be one of {', '.join(DIMS_TAG)}, got {dims!r}")
    return f"{method}-{DIMS_TAG[dims]}-{acceleration:g}x"


def parse_name(name: str) -> dict[str, Any]:
    """Split ``"mol-lr-2d-4x"`` into ``{"method": "mol-lr", "dims": "2d", "acceleration": 4.0}``; a model of the
    built-in radial data, ``"mol-lr-2d-radial"``, into ``{..., "acceleration": None, "trajectory": "radial"}``.

    ``dims`` is the physics spelling (``"2d"``, ``"3d"``, ``"2d+t"``); the name uses ``2dt`` for ``2d+t``.
    """
    m = _NAME_RE.match(name)
    if not m:
        raise InputError(f"pretrained name {name!r} does not follow '<method>-<2d|3d|2dt>-<accel>x' or "
                         f"'<method>-<2d|2dt>-radial' (e.g. 'mol-lr-2d-4x', 'mol-lr-2d-radial')")
    if m["trajectory"]:
        return {"method": m["method"], "dims": _DIMS_FROM_TAG[m["dims"]], "acceleration": None,
                "trajectory": m["trajectory"]}
    return {"method": m["method"], "dims": _DIMS_FROM_TAG[m["dims"]], "acceleration": float(m["accel"])}


def _root(root: str | os.PathLike | None) -> Path:
    """``root``, else ``$MOLRECON_PRETRAINED_DIR``, else the package's ``pretrained/`` folder."""
    if root is not None:
        return Path(root)
    env = os.environ.get(PRETRAINED_ENV)
    return Path(env).expanduser() if env else PRETRAINED_DIR


def _read_meta(json_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{json_path}: unreadable pretrained sidecar ({exc})") from None
    if not isinstance(meta, dict) or "model_config" not in meta or "weights" not in meta:
        raise CheckpointError(f"{json_path}: not a molrecon pretrained sidecar (missing 'model_config'/'weights')")
    return meta


def list_pretrained(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The shipped models, sorted by name: each entry is the sidecar JSON plus ``"name"`` and ``"path"``.

    A sidecar without its weights file is left out (it cannot be loaded).
    """
    folder = _root(root)
    if not folder.is_dir():
        return []
    out = []
    for json_path in sorted(folder.glob("*.json")):
        weights = json_path.with_suffix(".safetensors")
        if not weights.exists():
            continue
        meta = _read_meta(json_path)
        meta.setdefault("name", json_path.stem)
        meta["path"] = str(weights)
        out.append(meta)
    return out


def available_names(root: str | os.PathLike | None = None) -> list[str]:
    """Names accepted by :func:`load_pretrained`."""
    return [m["name"] for m in list_pretrained(root)]


def pretrained_info(name: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The sidecar of one shipped model; unknown name → :class:`InputError` listing the available ones."""
    folder = _root(root)
    if not isinstance(name, str) or not _SAFE_NAME_RE.match(name):
        raise InputError(f"pretrained name {name!r} is not a model name (letters, digits, '-', '.', '_' only; no "
                         f"path: see `molrecon models`)")
    json_path, weights = folder / f"{name}.json", folder / f"{name}.safetensors"
    if not (json_path.exists() and weights.exists()):
        names = available_names(root)
        listing = ", ".join(names) if names else "none shipped yet"
        raise InputError(f"unknown pretrained model {name!r} (available: {listing}; see `molrecon models`)")
    meta = _read_meta(json_path)
    meta.setdefault("name", name)
    meta["path"] = str(weights)
    return meta


def load_pretrained(name: str, device: str | Any = "cpu", root: str | os.PathLike | None = None,
                    verify: bool = True):
    """Build the shipped model ``name`` and load its weights, ready for ``model(y, physics)``.

    The module comes from :func:`molrecon.models.build_model` applied to the sidecar's ``model_config``; the
    weights come from safetensors (no pickle, so loading cannot run code) and must match the module exactly
    (``strict=True``). With ``verify`` the weights' SHA-256 must equal the one recorded at export. The model
    is returned in ``eval()`` mode with the sidecar attached as ``model.pretrained_meta``.
    """
    meta = pretrained_info(name, root)
    weights = Path(meta["path"])
    expected = meta["weights"].get("sha256")
    if verify and expected and sha256_file(weights) != expected:
        raise CheckpointError(f"{weights}: SHA-256 does not match the sidecar (corrupted or replaced weights)")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: cannot read safetensors weights ({exc})") from None
    model = build_model(dict(meta["model_config"]))
    check_state_dict(model, state, weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{weights}: weights do not fit the model built from the sidecar config ({first})") \
            from None
    model.pretrained_meta = meta
    if "normalization" in meta:  # sidecars from before the field use the default of their dims
        model.normalization = Normalization.from_dict(meta["normalization"], where=str(weights.with_suffix(".json")))
    return model.to(device).eval()


def save_pretrained(model: Any, model_config: dict[str, Any], name: str, meta: dict[str, Any] | None = None,
                    root: str | os.PathLike | None = None) -> Path:
    """Write ``model``'s weights and sidecar as the shipped pair ``root/<name>.safetensors|.json``.

    ``model_config`` must rebuild ``model`` through :func:`molrecon.models.build_model`. Both files are written
    atomically; the JSON is written last, so a listed model always has complete weights.
    """
    parsed = parse_name(name)
    norm = getattr(model, "normalization", None)
    norm = Normalization.from_dict(norm) if isinstance(norm, dict) else norm
    if norm is None:  # the scale the model was trained at: the default of its dims
        norm = default_normalization(getattr(model, "dims", None) or parsed["dims"])
    folder = _root(root)
    folder.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or non-contiguous storage; cloned contiguous CPU tensors are always accepted.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    weights = folder / f"{name}.safetensors"
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"name": name, "format": "molrecon-pretrained"})
    sidecar: dict[str, Any] = {
        "name": name,
        "format_version": FORMAT_VERSION,
        "method": getattr(model, "method_name", parsed["method"]),
        "dims": parsed["dims"],
        "acceleration": parsed["acceleration"],
        **({"trajectory": parsed["trajectory"]} if "trajectory" in parsed else {}),
        "model_config": dict(model_config),
        "weights": {
            "file": weights.name,
            "sha256": sha256_file(weights),
            "bytes": weights.stat().st_size,
            "num_parameters": int(sum(v.numel() for v in state.values())),
        },
        "normalization": norm.to_dict(),
        "exported": _utc_stamp(),
        "export_machine": machine_info(),
    }
    for key, value in (meta or {}).items():
        if key in ("weights", "format_version", "model_config"):
            raise InputError(f"extra_meta may not override {key!r}")
        sidecar[key] = value
    write_json_atomic(folder / f"{name}.json", sidecar)
    return weights


def _read_training_checkpoint(path: Path) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``(model, model_config, checkpoint_summary)`` of a training checkpoint, loaded without pickle code.

    :func:`molrecon.weights.checkpoint.load_checkpoint` reads it with ``torch.load(weights_only=True)`` and checks
    the layout; the model is rebuilt from its ``model_config`` exactly as the trainer does.
    """

    state = load_checkpoint(path)
    model = model_from_state(state, path)
    model_config = dict(state["model_config"])
    try:
        # The model's own description is complete (e.g. MOL's lazily inferred ``dims``), so prefer it: the
        # shipped model must rebuild without the training defaults that filled the checkpoint's config.
        if callable(getattr(model, "config", None)):
            full = {"method": model.method_name, **model.config()}
            build_model(dict(full)).load_state_dict(model.state_dict(), strict=True)
            model_config = full
    except Exception as exc:  # noqa: BLE001 - any failure here means the checkpoint cannot be shipped
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot rebuild the model from the checkpoint ({first})") from None
    summary: dict[str, Any] = {"config": state.get("config"), "step": state.get("step"),
                               "checkpoint": path.name}
    for key in ("epoch", "metrics", "molrecon_version"):
        if key in state:
            summary[key] = state[key]
    return model.eval(), model_config, summary


#: solver settings a shipped model may change from its training values: they move the path to the fixed point
#: (the start, the inexact blocks' CG steps, the stopping rule), not the fixed point (``molrecon bench speed
#: --cg-iters``)
SOLVER_SETTINGS = ("cg_iter", "cg_forcing", "max_iter", "tol", "solver", "init_cg_iter")


def export_pretrained(checkpoint_path: str | os.PathLike, name: str, extra_meta: dict[str, Any] | None = None,
                      root: str | os.PathLike | None = None, solver_overrides: dict[str, Any] | None = None) -> Path:
    """Turn a training checkpoint into the shipped pair ``<name>.safetensors`` + ``<name>.json``.

    ``extra_meta`` is merged into the sidecar; put there what a reader needs to trust the numbers, e.g.
    ``{"training": {"command": "molrecon train configs/mol_lr_2d.yaml", "device": "2 CPU cores",
    "wall_time_s": 1800}, "validation": {"psnr": 36.1, "ssim": 0.93, "split": "builtin-2d val"}}``.
    The checkpoint's config and step are recorded under ``"training"`` whatever ``extra_meta`` says.
    ``solver_overrides`` (keys of :data:`SOLVER_SETTINGS`) replace the trained solver settings in the shipped
    config; both values are recorded under ``"inference_overrides"``.
    """
    path = Path(checkpoint_path)
    model, model_config, summary = _read_training_checkpoint(path)
    meta = dict(extra_meta or {})
    if solver_overrides:
        _check_solver_overrides("export_pretrained", solver_overrides, model_config)
        meta["inference_overrides"] = {k: {"trained": model_config[k], "shipped": v}
                                       for k, v in solver_overrides.items()}
        model_config = {**model_config, **solver_overrides}  # only the weights of `model` are written
    training = dict(meta.pop("training", {}) or {})
    training.setdefault("config", summary["config"])
    training.setdefault("step", summary["step"])
    training.setdefault("checkpoint", summary["checkpoint"])
    if "command" not in training and isinstance(summary["config"], dict) and summary["config"].get("command"):
        training["command"] = summary["config"]["command"]
    for key in ("epoch", "metrics", "molrecon_version"):
        if key in summary:
            training.setdefault(key, summary[key])
    meta["training"] = training
    return save_pretrained(model, model_config, name, meta, root)


def _check_solver_overrides(caller: str, overrides: dict[str, Any], model_config: dict[str, Any]) -> None:
    unknown = sorted(set(overrides) - set(SOLVER_SETTINGS))
    if unknown:
        raise InputError(f"{caller}: {unknown} are not solver settings ({', '.join(SOLVER_SETTINGS)})")
    # a setting added after the model was stored is missing from its config but known to the rebuilt model
    known = set(model_config) | set(build_model(dict(model_config)).config())
    missing = sorted(set(overrides) - known)
    if missing:
        raise InputError(f"{caller}: this {model_config.get('method')} model has no {missing}")


def retune_pretrained(name: str, solver_overrides: dict[str, Any], note: str,
                      root: str | os.PathLike | None = None) -> Path:
    """Change the solver settings of a shipped model in place (its sidecar only; the weights are untouched).

    ``solver_overrides`` (keys of :data:`SOLVER_SETTINGS`) replace the shipped values in ``model_config``;
    ``"inference_overrides"`` keeps each setting's trained value beside the new shipped one, and ``note`` (what
    was measured to justify the change) is appended to ``"retuned"``. Returns the sidecar's path.
    """
    if not note:
        raise InputError("retune_pretrained: say what was measured (note)")
    json_path, meta = _sidecar_to_edit(name, root)
    config = meta["model_config"]
    _check_solver_overrides("retune_pretrained", solver_overrides, config)
    recorded = dict(meta.get("inference_overrides") or {})
    for key, value in solver_overrides.items():
        trained = recorded[key]["trained"] if key in recorded else config.get(key)
        recorded[key] = {"trained": trained, "shipped": value}
    meta["inference_overrides"] = recorded
    meta["model_config"] = {**config, **solver_overrides}
    meta["retuned"] = [*meta.get("retuned", []),
                       {"date": _utc_stamp(), "settings": dict(solver_overrides), "note": note}]
    write_json_atomic(json_path, meta)
    return json_path


#: Keys of the record :func:`record_lipschitz_at_test` keeps in a sidecar (``date`` is stamped there).
LIPSCHITZ_RECORD_KEYS = ("max_L", "items", "not_monotone", "certified", "kind", "command", "date")


def record_lipschitz_at_test(name: str, record: dict[str, Any], root: str | os.PathLike | None = None) -> Path:
    """Keep, in the sidecar of the shipped model ``name``, the Lipschitz constant of its ``H`` measured at its own
    reconstructions of the built-in test items (``tools/lipschitz_at_test.py --record``): ``max_L`` over
    ``items`` items, at ``not_monotone`` of which ``L >= 1``; ``certified``: ``L`` is a proof (MOL-SN) rather than
    an estimate; stamped with the date, so that a later export is seen to outdate it. ``molrecon models`` shows
    it. Returns the sidecar's path."""
    missing = [k for k in LIPSCHITZ_RECORD_KEYS if k != "date" and k not in record]
    if missing:
        raise InputError(f"record_lipschitz_at_test: the record lacks {missing}")
    json_path, meta = _sidecar_to_edit(name, root)
    meta["lipschitz_at_test"] = {**{k: record[k] for k in LIPSCHITZ_RECORD_KEYS if k != "date"},
                                 "date": _utc_stamp()}
    write_json_atomic(json_path, meta)
    return json_path


def _sidecar_to_edit(name: str, root: str | os.PathLike | None) -> tuple[Path, dict[str, Any]]:
    """The path and contents of the shipped model ``name``'s sidecar, to change it in place."""
    json_path = _root(root) / f"{name}.json"
    if not json_path.exists():
        raise InputError(f"{json_path}: no such pretrained model")
    return json_path, _read_meta(json_path)


def _utc_stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

