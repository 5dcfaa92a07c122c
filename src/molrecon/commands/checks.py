"""Checks that the commands run before computing anything: output paths, and the declared layout of an input.

An output path is refused (``InputError`` naming it) when it is an input, a folder, has the wrong extension,
or lies under a file or in a folder that cannot be written, so that a command fails in a second, not after
the whole reconstruction or training, and never replaces a file it should not.
An input HDF5 file is described from its metadata only (shape and dtype of each dataset), before any array is
read, and refused when ``kspace`` is not a complex dataset or is larger than :func:`max_input_bytes`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError
from ..io import open_h5

HDF5_SUFFIXES = (".h5", ".hdf5")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Environment variable setting the largest k-space (GiB, as complex64) a command will load.
MAX_INPUT_ENV = "MOLRECON_MAX_INPUT_GB"
DEFAULT_MAX_INPUT_GB = 8.0


def max_input_bytes() -> int:
    """The size limit of a loaded k-space (``$MOLRECON_MAX_INPUT_GB``, default 8 GiB as complex64)."""
    text = os.environ.get(MAX_INPUT_ENV)
    try:
        gb = float(text) if text else DEFAULT_MAX_INPUT_GB
    except ValueError:
        raise InputError(f"{MAX_INPUT_ENV}={text!r}: not a number of GiB") from None
    return int(gb * 2**30)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_writable_location(path: Path) -> None:
    """``path``'s nearest existing ancestor must be a folder this process can write into."""
    parent = path.absolute().parent
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{path}: cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{path}: cannot be written: folder {parent} is not writable")


def _suffix_ok(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def check_output_file(path: Path, suffixes: Sequence[str], what: str, inputs: Iterable[Path] = ()) -> None:
    """An output file: the right extension, not an input, not a folder, and writable."""
    if path.is_dir():
        raise InputError(f"{path}: {what} is a folder, expected a file name")
    if not _suffix_ok(path, suffixes):
        raise InputError(f"{path}: {what} must end in {' or '.join(suffixes)}")
    for inp in inputs:
        if inp is not None and _same_file(path, Path(inp)):
            raise InputError(f"{path}: {what} is the same file as the input {inp}; it would be replaced")
    check_writable_location(path)


def check_output_dir(path: Path, what: str, inputs: Iterable[Path] = ()) -> None:
    """An output folder: not a file, not an input folder, and writable (or creatable)."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: {what} is a file, expected a folder")
    for inp in inputs:
        if inp is not None and _same_file(path, Path(inp)):
            raise InputError(f"{path}: {what} is the input folder {inp}; its files would be replaced")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{path}: {what} is not writable")
    else:
        check_writable_location(path)


def inspect_kspace_file(path: Path, check_size: bool = True) -> dict[str, Any]:
    """Shapes and dtypes of ``kspace``/``maps``/``mask`` from the metadata only; refuse what cannot be loaded
    (with ``check_size``, also a declared size above :func:`max_input_bytes`).

    Returns ``{"kspace": (shape, dtype), "maps": ... or None, "mask": ... or None, "bytes": int}``.
    """
    out: dict[str, Any] = {}
    with open_h5(path) as f:
        if "kspace" not in f:
            raise InputError(f"{path}: missing HDF5 key 'kspace' (found: {', '.join(sorted(f.keys())) or 'none'})")
        for key in ("kspace", "maps", "mask"):
            if key not in f:
                out[key] = None
                continue
            node = f[key]
            if not isinstance(node, h5py.Dataset):
                raise InputError(f"{path}: {key!r} is an HDF5 {type(node).__name__.lower()}, expected a dataset "
                                 f"(array)")
            if node.dtype.kind not in "biufc":
                raise InputError(f"{path}: {key!r} holds {node.dtype} values, expected numbers")
            out[key] = (tuple(node.shape), node.dtype)
    shape, dtype = out["kspace"]
    if dtype.kind != "c":
        raise InputError(f"{path}: 'kspace' must be complex, got dtype {dtype}")
    if len(shape) not in (4, 5):
        raise InputError(f"{path}: 'kspace' must be [slices, coils, *spatial] with 2 or 3 spatial axes, got shape "
                         f"{shape}")
    if min(shape) < 1:
        raise InputError(f"{path}: 'kspace' is empty (shape {shape})")
    n = int(np.prod(shape, dtype=np.float64))
    out["bytes"] = 8 * n
    if not check_size:
        return out
    limit = max_input_bytes()
    if 8 * n > limit:
        raise InputError(f"{path}: 'kspace' {shape} needs {8 * n / 2**30:.1f} GiB as complex64, above the limit of "
                         f"{limit / 2**30:.1f} GiB (set {MAX_INPUT_ENV} to raise it)")
    if out["maps"] is not None and 8 * int(np.prod(out["maps"][0], dtype=np.float64)) > limit:
        raise InputError(f"{path}: 'maps' {out['maps'][0]} is above the limit of {limit / 2**30:.1f} GiB "
                         f"(set {MAX_INPUT_ENV} to raise it)")
    return out
