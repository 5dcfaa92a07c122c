"""File input/output: atomic writes (bytes, text, JSON, PNG figures), the machine description every JSON
carries, and reading k-space files in the fastMRI multicoil HDF5 layout.

Every writer goes through a temporary name in the destination folder and ``os.replace`` on success, so an
interrupted command never leaves a half-written file and never destroys the previous version.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np
import torch

from ._version import __version__
from .errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file private (0600); give the result the permissions of an ordinary new file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``path`` only if the block finishes without error."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def machine_info() -> dict[str, Any]:
    """The machine, library versions and the command line, for every JSON the project writes."""
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "molrecon": __version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
    }


def json_ready(obj: Any) -> Any:
    """``obj`` as plain JSON values: tensors and arrays as lists, paths as strings, NaN/±Inf as ``None``.

    Strict JSON has no NaN or Infinity, and a number that was not computed (a bound that does not exist, a
    metric of a diverged run) reads as ``null`` to every JSON consumer.
    """
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray, np.generic)):
        return json_ready(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON (non-finite numbers become ``null``, see :func:`json_ready`),
    atomically."""
    text = json.dumps(json_ready(obj), indent=2, allow_nan=False)
    with atomic_write(path, "w") as fh:
        fh.write(text + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path, "w") as fh:
        fh.write(text)


def save_figure_atomic(fig: Any, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG through a temporary file, then close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) on ``path`` for the duration of the block (created if absent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_h5_atomic(path: str | os.PathLike, datasets: dict[str, Any], attrs: dict[str, Any] | None = None) -> None:
    """Write an HDF5 file with the given datasets (arrays, bytes or str) and root attributes, atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in datasets.items():
            if isinstance(value, (bytes, str)):
                f.create_dataset(key, data=value)
            else:
                f.create_dataset(key, data=np.asarray(value))
        for key, value in (attrs or {}).items():
            f.attrs[key] = value


def open_h5(path: str | os.PathLike):
    """Open an HDF5 file for reading, turning a missing, truncated or non-HDF5 file into one clear error."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        reason = "truncated or corrupted HDF5 file" if h5py.is_hdf5(path) else "not an HDF5 file"
        raise InputError(f"{path}: {reason} ({str(exc).splitlines()[0]})") from None


def _dataset(f: Any, key: str, path: Path) -> np.ndarray:
    try:
        return f[key][()]
    except KeyError:
        raise InputError(f"{path}: missing HDF5 key {key!r} (found: {', '.join(sorted(f.keys())) or 'none'})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read {key!r}: truncated or corrupted ({exc})") from None


def read_kspace_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a multicoil file in the fastMRI layout and check it.

    Returns a dict with ``kspace`` ``[slices, C, *spatial]`` complex64, ``maps`` (same shape, or ``None``),
    ``mask`` (broadcastable to ``kspace``, or ``None``: then the zero columns of k-space define it),
    ``attrs`` (root attributes) and ``header`` (the ISMRMRD XML as ``str`` or ``None``).
    """
    path = Path(path)
    with open_h5(path) as f:
        kspace = _dataset(f, "kspace", path)
        maps = _dataset(f, "maps", path) if "maps" in f else None
        mask = _dataset(f, "mask", path) if "mask" in f else None
        header = f["ismrmrd_header"][()] if "ismrmrd_header" in f else None
        attrs = dict(f.attrs)
    if not np.iscomplexobj(kspace):
        raise InputError(f"{path}: 'kspace' must be complex, got dtype {kspace.dtype}")
    if kspace.ndim not in (4, 5):
        raise InputError(f"{path}: 'kspace' must be [slices, coils, *spatial] with 2 or 3 spatial axes, got shape "
                         f"{kspace.shape}")
    if not np.isfinite(kspace).all():
        raise InputError(f"{path}: 'kspace' contains NaN or Inf values")
    kspace = kspace.astype(np.complex64)
    if maps is not None:
        if not np.iscomplexobj(maps):
            raise InputError(f"{path}: 'maps' must be complex, got dtype {maps.dtype}")
        if maps.ndim != kspace.ndim:
            raise InputError(f"{path}: 'maps' shape {maps.shape} does not match 'kspace' shape {kspace.shape}")
        if maps.shape[1] != kspace.shape[1]:
            raise InputError(f"{path}: 'maps' has {maps.shape[1]} coils but 'kspace' has {kspace.shape[1]}")
        if maps.shape[2:] != kspace.shape[2:] or maps.shape[0] not in (1, kspace.shape[0]):
            raise InputError(f"{path}: 'maps' shape {maps.shape} does not match 'kspace' shape {kspace.shape}")
        if not np.isfinite(maps).all():
            raise InputError(f"{path}: 'maps' contains NaN or Inf values")
        maps = maps.astype(np.complex64)
    if mask is not None:
        mask = np.asarray(mask).astype(np.float32)
        if not np.isfinite(mask).all():
            raise InputError(f"{path}: 'mask' contains NaN or Inf values")
        try:
            np.broadcast_shapes(mask.shape, kspace.shape[-mask.ndim:] if mask.ndim <= kspace.ndim else ())
        except ValueError:
            raise InputError(f"{path}: 'mask' shape {mask.shape} does not broadcast to k-space "
                             f"{kspace.shape}") from None
        if mask.ndim > kspace.ndim:
            raise InputError(f"{path}: 'mask' shape {mask.shape} has more axes than k-space {kspace.shape}")
        if mask.sum() == 0:
            raise InputError(f"{path}: 'mask' is empty (no k-space sample acquired)")
    if isinstance(header, bytes):
        header = header.decode("utf-8", errors="replace")
    return {"kspace": kspace, "maps": maps, "mask": mask, "attrs": attrs, "header": header}
