"""Checkpoints that never run code when loaded.

A checkpoint is a ``torch.save`` zip holding only tensors and plain Python values (dict, list, str, int,
float, bool, None), so it loads with ``torch.load(..., weights_only=True)``, whose restricted unpickler
refuses any other global (a crafted ``__reduce__`` payload is rejected before it can execute). RNG states are
therefore stored as tensors and plain numbers, never as pickled generator objects.

Layout (``format = "molrecon-checkpoint"``, ``version = 1``)::

    model_config   dict  -> molrecon.models.build_model(model_config) rebuilds the architecture
    model_state    dict  state_dict of the model
    optimizer, scheduler   state dicts (training checkpoints only)
    rng            {"torch": ByteTensor, "cuda": [ByteTensor], "numpy": {...}, "python": {...}}
    config         the full training config
    step, epoch, epoch_step   progress counters (epoch_step = batches of ``epoch`` already consumed)
    metrics        dict of the last logged / validation numbers
    molrecon_version

Writes go through :func:`molrecon.io.atomic_path` (temporary name + ``os.replace``): a run killed while saving
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..errors import CheckpointError
from ..io import atomic_path
from ..models.factory import build_model

FORMAT = "molrecon-checkpoint"
VERSION = 1


# -- RNG states as plain data -------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and python RNG states as tensors / plain numbers."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "state": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss": None if py_gauss is None else float(py_gauss)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


# -- save / load ----------------------------------------------------------------------------------------------
def _non_finite_tensors(state: dict[str, Any]) -> list[str]:
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())
            and not bool(torch.isfinite(v).all())]


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], check_finite: bool = True) -> Path:
    """Write ``state`` (must contain ``model_state`` and ``model_config``) atomically to ``path``.

    With ``check_finite`` a model state holding NaN/Inf is refused (:class:`CheckpointError`), so a diverged
    run can never overwrite the last good checkpoint.
    """
    path = Path(path)
    for key in ("model_state", "model_config"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint state lacks {key!r}")
    if check_finite:
        bad = _non_finite_tensors(state["model_state"])
        if bad:
            raise CheckpointError(f"{path}: refusing to save a model with NaN/Inf in {', '.join(bad[:5])}")

    payload = {"format": FORMAT, "version": VERSION, "molrecon_version": __version__, **state}

    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
        with open(tmp, "rb") as fh:  # durability before the rename
            os.fsync(fh.fileno())
    return path


# torch.save writes a zip archive (PK\x03\x04); the legacy format is a raw pickle (protocol 2+: \x80)
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def check_state_dict(model: torch.nn.Module, state: Mapping[str, Any], where: str | Path) -> None:
    """Refuse weights that do not fit ``model`` exactly or hold NaN/Inf; the error names the tensors."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing tensor(s) {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    if unexpected:
        problems.append(f"unexpected tensor(s) {', '.join(unexpected[:4])}"
                        f"{' ...' if len(unexpected) > 4 else ''}")
    for k, v in state.items():
        if k in expected and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(expected[k].shape):
            problems.append(f"tensor {k} has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}")
    if problems:
        raise CheckpointError(f"{where}: weights do not fit the {getattr(model, 'method_name', 'model')} model: "
                              f"{'; '.join(problems[:3])}")
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{where}: weights contain NaN/Inf in {', '.join(bad[:4])}"
                              f"{' ...' if len(bad) > 4 else ''} (a diverged or corrupted model)")


def _check_checkpoint_file(path: Path) -> None:
    """A file that is not a torch archive at all is named as such (not as an unsafe pickle)."""
    if not path.is_file():
        return  # load_checkpoint names a missing file or a folder
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head and not any(head.startswith(m) for m in _TORCH_MAGIC):
        raise CheckpointError(f"{path}: not a torch checkpoint (the file does not start like a torch.save "
                              f"archive; wrong file or corrupted)")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check its layout.

    Raises :class:`CheckpointError` when the file is missing, truncated/corrupted, not a molrecon checkpoint,
    or contains Python objects other than tensors and plain values (which would run code when unpickled).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty (truncated)")
    _check_checkpoint_file(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Weights only load failed" in msg or "Unsupported global" in msg or "GLOBAL" in msg:
            first = next((ln.strip() for ln in msg.splitlines() if "Unsupported" in ln or "GLOBAL" in ln), "")
            raise CheckpointError(f"{path}: refused to load: the file contains Python objects that could run "
                                  f"code, not only tensors ({first or 'weights_only check failed'})") from None
        raise CheckpointError(f"{path}: corrupted checkpoint (not a valid torch file: {msg.splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupted or truncated checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a molrecon checkpoint (missing format marker {FORMAT!r})")
    if int(state.get("version", -1)) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')} is newer than this molrecon "
                              f"understands ({VERSION}); upgrade molrecon")
    for key in ("model_state", "model_config"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    if not isinstance(state["model_config"], dict) or "method" not in state["model_config"]:
        raise CheckpointError(f"{path}: checkpoint model_config has no 'method'")
    return state


def load_model_from_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model stored in a checkpoint (architecture from ``model_config``, then weights), in eval mode."""
    model = model_from_state(load_checkpoint(path, map_location=map_location), path)
    model.to(map_location)
    model.eval()
    return model


def model_from_state(state: dict[str, Any], path: str | os.PathLike) -> torch.nn.Module:
    """The model of a loaded checkpoint ``state``: architecture from ``model_config``, then its weights."""

    try:
        model = build_model(dict(state["model_config"]))
    except Exception as exc:  # an unknown/incompatible config is a checkpoint problem for the user
        raise CheckpointError(f"{path}: cannot rebuild the model from its config ({exc})") from None
    if not isinstance(state["model_state"], Mapping):
        raise CheckpointError(f"{path}: 'model_state' is not a mapping of tensors")
    check_state_dict(model, state["model_state"], path)
    try:
        model.load_state_dict(state["model_state"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the model "
                              f"({str(exc).strip().splitlines()[0]})") from None
    return model
