"""Choose a reader or writer by extension and content, and turn a file into torch tensors ready to reconstruct.

Readers: non-Cartesian HDF5 (``kspace`` and ``trajectory`` datasets, :mod:`molrecon.formats.noncartesian`),
fastMRI HDF5 (a top-level ``kspace`` dataset), ISMRMRD (a group with an ``xml`` header), BART
(``NAME.cfl`` + ``NAME.hdr``). ``.h5``/``.hdf5``/``.mrd`` files are told apart by content, so an ISMRMRD file
named ``.h5`` works too; anything else is refused with one line naming the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import InputError
from ..io import open_h5
from ..physics import check_maps_normalised, estimate_coil_maps, estimate_maps_noncartesian
from .cfl import read_cfl_maps, read_cfl_problem, write_cfl_problem
from .fastmri import read_fastmri, write_fastmri
from .ismrmrd_raw import read_ismrmrd
from .ismrmrd_write import write_ismrmrd
from .noncartesian import read_noncartesian, write_noncartesian
from .problem import RawProblem

FORMATS = ("fastmri", "ismrmrd", "cfl", "noncartesian")
HDF5_SUFFIXES = (".h5", ".hdf5", ".mrd", ".ismrmrd")
INPUT_SUFFIXES = HDF5_SUFFIXES + (".cfl", ".hdr")
MIN_CALIB_WIDTH = 8

READERS: dict[str, Callable[..., RawProblem]] = {
    "fastmri": lambda path, dims=None, prewhiten=True: read_fastmri(path, dims),
    "ismrmrd": read_ismrmrd,
    "cfl": lambda path, dims=None, prewhiten=True: read_cfl_problem(path, dims),
    "noncartesian": lambda path, dims=None, prewhiten=True: read_noncartesian(path, dims),
}
WRITERS: dict[str, Callable[[Path, RawProblem], Path]] = {
    "fastmri": write_fastmri,
    "ismrmrd": write_ismrmrd,
    "cfl": write_cfl_problem,
    "noncartesian": write_noncartesian,
}


def _hdf5_kind(path: Path) -> str:
    try:
        with h5py.File(path, "r") as f:
            if "kspace" in f:
                return "noncartesian" if "trajectory" in f else "fastmri"
            if any(isinstance(f[k], h5py.Group) and "xml" in f[k] for k in f):
                return "ismrmrd"
            keys = ", ".join(sorted(f.keys())) or "none"
    except OSError as exc:
        reason = "truncated or corrupted HDF5 file" if h5py.is_hdf5(path) else "not an HDF5 file"
        raise InputError(f"{path}: {reason} ({str(exc).splitlines()[0]})") from None
    raise InputError(f"{path}: neither fastMRI (missing HDF5 key 'kspace'; found: {keys}) nor ISMRMRD (no group "
                     "with an 'xml' header)")


def detect_format(path: str | os.PathLike) -> str:
    """``"fastmri"``, ``"noncartesian"``, ``"ismrmrd"`` or ``"cfl"`` for an input file, or :class:`InputError`
    naming it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".cfl", ".hdr") or (not path.exists() and path.with_suffix(".cfl").exists()):
        return "cfl"
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a k-space file")
    with open(path, "rb") as fh:
        signature = fh.read(8)
    if signature == b"\x89HDF\r\n\x1a\n":
        return _hdf5_kind(path)
    if suffix in HDF5_SUFFIXES:
        return _hdf5_kind(path)  # gives the "not an HDF5 file" / "truncated" message
    raise InputError(f"{path}: unknown format (expected fastMRI or ISMRMRD HDF5 .h5/.mrd, or BART .cfl/.hdr)")


def output_format(path: str | os.PathLike, to: str | None = None) -> str:
    """The writer for an output path: ``to`` if given, else by extension (``.mrd`` ISMRMRD, ``.cfl`` BART,
    ``.h5``/``.hdf5`` fastMRI)."""
    if to is not None:
        if to not in FORMATS:
            raise InputError(f"unknown output format {to!r}; choose from {', '.join(FORMATS)}")
        return to
    suffix = Path(path).suffix.lower()
    by_suffix = {".cfl": "cfl", ".hdr": "cfl", ".mrd": "ismrmrd", ".ismrmrd": "ismrmrd", ".h5": "fastmri",
                 ".hdf5": "fastmri"}
    if suffix not in by_suffix:
        raise InputError(f"{path}: cannot tell the output format from the extension; use .h5 (fastMRI), "
                         ".mrd (ISMRMRD) or .cfl (BART), or --to")
    return by_suffix[suffix]


def read_problem(path: str | os.PathLike, dims: str | None = None, prewhiten: bool = True) -> RawProblem:
    """Read any supported k-space file (format by content and extension) into a :class:`RawProblem`."""
    return READERS[detect_format(path)](Path(path), dims=dims, prewhiten=prewhiten)


def read_maps(path: str | os.PathLike, problem: RawProblem) -> np.ndarray:
    """Coil maps from a separate file for ``problem``: BART ``.cfl`` or the ``maps`` dataset of an HDF5 file."""
    path = Path(path)
    if detect_format(path) == "cfl":
        if problem.is_noncartesian:
            raise InputError(f"{path}: give the coil maps of non-Cartesian data as an HDF5 'maps' dataset")
        return read_cfl_maps(path, problem)
    with open_h5(path) as f:
        if "maps" not in f:
            raise InputError(f"{path}: no 'maps' dataset (found: {', '.join(sorted(f.keys())) or 'none'})")
        try:
            maps = f["maps"][()]
        except OSError as exc:
            raise InputError(f"{path}: cannot read 'maps': truncated or corrupted ({exc})") from None
    k = problem.kspace.shape
    want = k[1:] if not problem.is_noncartesian else (k[1], *_noncartesian_spatial(problem))
    if not np.iscomplexobj(maps) or maps.ndim != 1 + len(want) or maps.shape[1:] != want or \
            maps.shape[0] not in (1, k[0]):
        raise InputError(f"{path}: 'maps' {maps.shape} {maps.dtype} do not fit k-space {k} of {problem.source}")
    return maps.astype(np.complex64)


def _noncartesian_spatial(problem: RawProblem) -> tuple[int, ...]:
    matrix = tuple(problem.matrix)
    return (problem.kspace.shape[2], *matrix) if problem.dims == "2d+t" else matrix


def slice_trajectory(problem: RawProblem, s: int) -> np.ndarray:
    """The trajectory of slice ``s`` of a non-Cartesian problem (``[S, K, ndim]`` files have one per slice)."""
    traj = problem.trajectory
    return traj[s] if problem.dims != "2d+t" and traj.ndim == 3 else traj


def slice_dcf(problem: RawProblem, s: int) -> np.ndarray | None:
    """The dcf of slice ``s`` (``None`` when the file has none)."""
    dcf = problem.dcf
    if dcf is None:
        return None
    return dcf[s] if problem.dims != "2d+t" and dcf.ndim == 2 else dcf


def _noncartesian_maps(problem: RawProblem, calib_width: int) -> torch.Tensor:
    """ESPIRiT maps per slice from the gridded centre of the non-Cartesian k-space."""
    maps = []
    for s in range(problem.kspace.shape[0]):
        traj = torch.from_numpy(np.ascontiguousarray(slice_trajectory(problem, s)))
        dcf = slice_dcf(problem, s)
        maps.append(estimate_maps_noncartesian(torch.from_numpy(problem.kspace[s:s + 1]), traj,
                                               _noncartesian_spatial(problem), dims=problem.dims,
                                               dcf=None if dcf is None else torch.from_numpy(dcf),
                                               calib=calib_width))
    return torch.cat(maps)


def load_problem(path: str | os.PathLike, dims: str | None = None, calib_width: int = 24,
                 maps_path: str | os.PathLike | None = None, prewhiten: bool = True):
    """Read a file and return ``(kspace [S,C,*sp], maps [S,C,*sp], mask, dims, problem)`` as torch tensors.

    Maps come from ``maps_path``, else the file, else ESPIRiT on the file's calibration k-space (with the
    file's flagged calibration width when it has one, else ``calib_width``); for a non-Cartesian file, on the
    gridded ``calib_width``-wide centre of its k-space (``problem.trajectory`` is then set; ``mask`` is ones).
    """
    problem = read_problem(path, dims, prewhiten=prewhiten)
    if maps_path is not None:
        problem.maps = read_maps(maps_path, problem)
    kspace = torch.from_numpy(np.ascontiguousarray(problem.kspace))
    mask = torch.from_numpy(np.ascontiguousarray(problem.mask, dtype=np.float32))
    if problem.maps is not None:
        maps = torch.from_numpy(np.ascontiguousarray(problem.maps))
        check_maps_normalised(maps, source=f"{maps_path or path}: maps")
    elif problem.is_noncartesian:
        maps = _noncartesian_maps(problem, calib_width)
    else:
        calib = problem.calib_kspace if problem.calib_kspace is not None else problem.kspace
        width = problem.calib_width or calib_width
        if width < MIN_CALIB_WIDTH:  # ESPIRiT's 6x6 kernel needs a few more lines than its width
            warnings.warn(f"{path}: the flagged calibration region is {width} lines, too narrow for ESPIRiT; "
                          f"using the central {calib_width} lines", stacklevel=2)
            width = calib_width
        maps = estimate_coil_maps(torch.from_numpy(np.ascontiguousarray(calib)), calib_width=width,
                                  dims=problem.dims)
    return kspace, maps, mask, problem.dims, problem
