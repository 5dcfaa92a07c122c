r"""BART's ``.cfl``/``.hdr`` pairs: read, write, and the mapping to molrecon's shapes and FFT convention.

A BART array is complex64, stored column-major (first dimension fastest) in ``NAME.cfl``; ``NAME.hdr`` holds the
dimensions as text after a ``# Dimensions`` line. BART names its dimensions (``src/misc/mri.h``)::

    0 READ  1 PHS1  2 PHS2  3 COIL  4 MAPS  5 TE  6 COEFF  7 COEFF2  8 ITER  9 CSHIFT  10 TIME  11 TIME2
    12 LEVEL  13 SLICE  14 AVG

molrecon (``docs/conventions.md``) keeps the readout on the first spatial axis, then phase encoding 1, then 2:

=====================  ===========================  ===============================================
molrecon dims          molrecon k-space             BART array (READ, PHS1, PHS2, COIL, ..., TIME, ..., SLICE)
=====================  ===========================  ===============================================
``2d``                 ``[S, C, H, W]``             ``(H, W, 1, C, ..., 1, ..., S)``
``3d``                 ``[S, C, D, H, W]``          ``(D, H, W, C, ..., 1, ..., S)``
``2d+t``               ``[S, C, T, H, W]``          ``(H, W, 1, C, ..., T, ..., S)``
=====================  ===========================  ===============================================

Images drop the coil axis (BART's ``COIL`` dimension is then 1).

Centring: BART centres its FFT (``fftc``) by multiplying with the phase ``fftmod`` before and after the FFT
instead of shifting. For an even length ``N`` that phase is ``(-1)^n`` times a global factor, and the two global
factors multiply to ``(-1)^{N/2}``; the result is exactly our ``fftshift(fft(ifftshift(x), norm="ortho"))``
(:mod:`molrecon.physics.fft` does the same modulation). For odd lengths BART's phase is chosen to match the
shifted FFT as well. So the conversion between BART's centred k-space and ours is the identity and files move
between the tools unchanged; ``tests/test_interop_bart.py`` checks this against ``bart fft -u`` for even and odd
lengths, and ``tests/test_formats.py`` against BART's published ``fftmod`` formula.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import atomic_write
from .problem import RawProblem, compact_mask

READ, PHS1, PHS2, COIL, TIME, SLICE = 0, 1, 2, 3, 10, 13
BART_DIMS = 16


def _base(path: str | os.PathLike) -> Path:
    """``x``, ``x.cfl`` and ``x.hdr`` all name the pair ``x``."""
    path = Path(path)
    return path.with_suffix("") if path.suffix.lower() in (".cfl", ".hdr") else path


def read_cfl(path: str | os.PathLike) -> np.ndarray:
    """Read a BART pair into a complex64 array of BART's dimensions (trailing 1s dropped, at least 1-D)."""
    base = _base(path)
    hdr, cfl = base.with_suffix(".hdr"), base.with_suffix(".cfl")
    for p in (hdr, cfl):
        if not p.is_file():
            raise InputError(f"{p}: file not found (a BART array needs both NAME.hdr and NAME.cfl)")
    lines = hdr.read_text(errors="replace").splitlines()
    dims = None
    for i, line in enumerate(lines[:-1]):
        if line.strip().startswith("# Dimensions"):
            try:
                dims = [int(v) for v in lines[i + 1].split()]
            except ValueError:
                raise InputError(f"{hdr}: the line after '# Dimensions' is not a list of integers") from None
            break
    if not dims or min(dims) < 1:
        raise InputError(f"{hdr}: no valid '# Dimensions' line (positive integers) in this BART header")
    count = int(np.prod(dims))
    size = cfl.stat().st_size
    if size != 8 * count:
        raise InputError(f"{cfl}: holds {size} bytes but {hdr.name} says dims {' '.join(map(str, dims))} "
                         f"= {count} complex64 values ({8 * count} bytes)")
    data = np.fromfile(cfl, dtype=np.complex64, count=count)
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return data.reshape(dims, order="F")


def write_cfl(path: str | os.PathLike, array: np.ndarray, command: str = "molrecon") -> Path:
    """Write ``array`` (BART's dimension order) as ``NAME.hdr`` + ``NAME.cfl``; each file atomically.

    The ``.cfl`` is written first, so a reader never sees a header that announces data not yet there.
    """
    base = _base(path)
    arr = np.asarray(array)
    if arr.ndim > BART_DIMS:
        raise InputError(f"{base}: BART arrays have at most {BART_DIMS} dimensions, got {arr.ndim}")
    if not np.isfinite(arr).all():
        raise InputError(f"{base}.cfl: array to write contains NaN or Inf values")
    dims = list(arr.shape) + [1] * (BART_DIMS - arr.ndim)
    with atomic_write(base.with_suffix(".cfl")) as fh:
        fh.write(np.asarray(arr, dtype=np.complex64).tobytes(order="F"))
    text = f"# Dimensions\n{' '.join(map(str, dims))} \n# Command\n{command}\n# Creator\nmolrecon\n"
    with atomic_write(base.with_suffix(".hdr"), "w") as fh:
        fh.write(text)
    return base.with_suffix(".cfl")


def _pad(arr: np.ndarray) -> np.ndarray:
    return arr.reshape(arr.shape + (1,) * (BART_DIMS - arr.ndim))


def bart_to_molrecon(arr: np.ndarray, coils: bool = True) -> tuple[np.ndarray, str]:
    """A BART array → ``([S, C, *spatial] or [S, *spatial], dims)`` (see the table in the module docstring).

    Refuses arrays that use a BART dimension molrecon has no place for (MAPS > 1, TE, COEFF, ...).
    """
    a = _pad(np.asarray(arr))
    used = {READ, PHS1, PHS2, COIL, TIME, SLICE}
    extra = [d for d in range(BART_DIMS) if d not in used and a.shape[d] > 1]
    if extra:
        raise InputError(f"BART dimension(s) {extra} > 1 (shape {a.shape[:max(extra) + 1]}) have no molrecon "
                         "equivalent; only READ, PHS1, PHS2, COIL, TIME and SLICE may be > 1")
    if not coils and a.shape[COIL] > 1:
        raise InputError(f"expected an image (COIL dimension 1), got {a.shape[COIL]} coils")
    if a.shape[PHS2] > 1 and a.shape[TIME] > 1:
        raise InputError("BART arrays with both PHS2 > 1 and TIME > 1 (3D+time) are not supported")
    s = a.shape
    if s[TIME] > 1:
        dims, order, spatial = "2d+t", (SLICE, COIL, TIME, READ, PHS1), (s[TIME], s[READ], s[PHS1])
    elif s[PHS2] > 1:
        dims, order, spatial = "3d", (SLICE, COIL, READ, PHS1, PHS2), (s[READ], s[PHS1], s[PHS2])
    else:
        dims, order, spatial = "2d", (SLICE, COIL, READ, PHS1), (s[READ], s[PHS1])
    squeezed = [d for d in range(BART_DIMS) if d not in order]
    out = np.transpose(a, order + tuple(squeezed)).reshape((s[SLICE], s[COIL]) + spatial)
    return (out if coils else out[:, 0]).astype(np.complex64), dims


def molrecon_to_bart(arr: np.ndarray, dims: str, coils: bool = True) -> np.ndarray:
    """The inverse of :func:`bart_to_molrecon`: ``[S, C, *spatial]`` (or ``[S, *spatial]``) → BART's order."""
    a = np.asarray(arr)
    if not coils:
        a = a[:, None]
    if a.ndim != (4 if dims == "2d" else 5):
        raise InputError(f"cannot write shape {np.asarray(arr).shape} as BART {dims} data")
    out = np.ones(BART_DIMS, dtype=int)
    S, C = a.shape[:2]
    if dims == "2d":
        src = (SLICE, COIL, READ, PHS1)
    elif dims == "3d":
        src = (SLICE, COIL, READ, PHS1, PHS2)
    else:
        src = (SLICE, COIL, TIME, READ, PHS1)
    for axis, d in enumerate(src):
        out[d] = a.shape[axis]
    order = np.argsort(src)  # molrecon axes sorted by their BART dimension
    b = np.transpose(a, tuple(order))
    return b.reshape(tuple(out)).astype(np.complex64)



def _read_as_molrecon(base: Path) -> tuple[np.ndarray, str]:
    """A CFL pair in molrecon's order and its layout; every error names the file."""
    try:
        return bart_to_molrecon(read_cfl(base))
    except InputError as exc:
        msg = str(exc)
        raise InputError(msg if msg.startswith(str(base)) else f"{base}.cfl: {msg}") from None


def read_cfl_problem(path: str | os.PathLike, dims: str | None = None) -> RawProblem:
    """A BART k-space pair as a problem; the mask is the non-zero pattern (what ``bart pics`` uses too)."""
    base = _base(path)
    kspace, found = _read_as_molrecon(base)
    if dims is not None and dims != found:
        raise InputError(f"{base}.cfl: BART's dimensions give a {found} layout (PHS2 > 1 is 3D, TIME > 1 is "
                         f"2D+time), not --dims {dims}")
    if not np.isfinite(kspace).all():
        raise InputError(f"{base}.cfl: k-space contains NaN or Inf values")
    mask = (np.abs(kspace).sum(axis=1) > 0).astype(np.float32)
    if mask.sum() == 0:
        raise InputError(f"{base}.cfl: k-space is all zero (no sample acquired)")
    mask = compact_mask(mask, found)
    return RawProblem(kspace=kspace, mask=mask, dims=found, source=base.with_suffix(".cfl"))


def read_cfl_maps(path: str | os.PathLike, problem: RawProblem) -> np.ndarray:
    """BART sensitivities (e.g. from ``bart ecalib -m1``) in molrecon's shape for ``problem``'s k-space."""
    base = _base(path)
    maps, found = _read_as_molrecon(base)
    if problem.dims == "2d+t" and found == "2d":  # static maps over the frames, as molrecon stores them
        maps = np.repeat(maps[:, :, None], problem.kspace.shape[2], axis=2)
    k = problem.kspace.shape
    if maps.shape[1:] != k[1:] or maps.shape[0] not in (1, k[0]):
        raise InputError(f"{base}.cfl: maps of molrecon shape {maps.shape} do not fit k-space {k} of "
                         f"{problem.source}")
    return maps


def write_cfl_problem(path: str | os.PathLike, problem: RawProblem) -> Path:
    """Write the (masked) k-space of ``problem`` as a BART pair; maps, if any, beside it as ``NAME_maps``."""
    base = _base(path)
    mask = np.broadcast_to(np.asarray(problem.mask, np.float32), problem.kspace.shape)
    out = write_cfl(base, molrecon_to_bart(problem.kspace * mask, problem.dims), command="molrecon convert")
    if problem.maps is not None:
        write_cfl(base.with_name(base.name + "_maps"), molrecon_to_bart(problem.maps, problem.dims),
                  command="molrecon convert")
    return out


def write_cfl_image(path: str | os.PathLike, image: np.ndarray, dims: str) -> Path:
    """Write a complex image ``[S, *spatial]`` in BART's order (COIL dimension 1), like ``bart pics`` output."""
    return write_cfl(path, molrecon_to_bart(np.asarray(image), dims, coils=False), command="molrecon recon")
