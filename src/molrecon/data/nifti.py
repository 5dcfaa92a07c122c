r"""NIfTI export of reconstructions (nibabel), for viewing in common tools (FSLeyes, ITK-SNAP, 3D Slicer...).

Array convention of :mod:`molrecon.data`: an axial image ``[H, W]`` has row 0 anterior and column 0 the
patient's right (radiological view); a stack ``[S, H, W]`` has slices from inferior to superior. The NIfTI data
array is written as ``(i, j, k) = (w, h, s)`` and the default affine maps voxel centres to RAS+ millimetres
with the centre of the stack at the origin:

.. math::
    \begin{pmatrix}x\\y\\z\end{pmatrix} =
    \begin{pmatrix}-v_w & 0 & 0\\ 0 & -v_h & 0\\ 0 & 0 & v_s\end{pmatrix}
    \left(\begin{pmatrix}i\\j\\k\end{pmatrix} - c\right),\qquad c = \tfrac{1}{2}(W-1, H-1, S-1)

(columns run right → left, so :math:`x` decreases; rows run anterior → posterior, so :math:`y` decreases).
Give ``affine`` to override it (it then maps ``(w, h, s)`` voxel indices to world mm).

Reconstructions of every layout are written by :func:`recon_nifti_bytes`: 2D slices ``[S, H, W]`` as one
volume; a 3D volume ``[1, D, H, W]`` as a volume (``D`` along :math:`z`), several as a 4-D series; 2D+time
``[S, T, H, W]`` as ``(W, H, S, T)``. Voxel sizes come from the file (:func:`voxel_size_of`): its
``voxel_size_mm`` attribute, else the ISMRMRD header's field of view / matrix, else 1 mm (then said so in the
NIfTI description).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import InputError
from ..io import atomic_write
from .header import parse_header


def axial_affine(shape_shw: Sequence[int], voxel_size: Sequence[float]) -> np.ndarray:
    """The default voxel→RAS+ affine for data written as ``(w, h, s)`` (see the module docstring)."""
    s, h, w = (int(n) for n in shape_shw)
    vs, vh, vw = (float(v) for v in voxel_size)
    a = np.diag([-vw, -vh, vs, 1.0])
    centre = np.array([(w - 1) / 2, (h - 1) / 2, (s - 1) / 2])
    a[:3, 3] = -a[:3, :3] @ centre
    return a


def _prepare(image: Any, path: Path) -> np.ndarray:
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise InputError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: image to export contains NaN or Inf values")
    return arr.astype(np.float32)


def _voxels(voxel_size: Sequence[float]) -> tuple[float, float, float]:
    vs = tuple(float(v) for v in voxel_size)
    if len(vs) == 2:
        vs = (1.0, *vs)
    if len(vs) != 3 or not all(np.isfinite(vs)) or min(vs) <= 0:
        raise InputError(f"voxel_size must be 2 or 3 positive numbers (mm), got {tuple(voxel_size)}")
    return vs  # type: ignore[return-value]


def nifti_bytes(arr: np.ndarray, path: str | os.PathLike, voxel_size: Sequence[float] = (1.0, 1.0, 1.0), *,
                affine: np.ndarray | None = None, frame_duration_s: float = 1.0,
                description: str = "molrecon reconstruction") -> bytes:
    """The NIfTI-1 file (gzipped when ``path`` ends in ``.gz``) of a magnitude volume ``[S, H, W]`` or series
    ``[T, S, H, W]`` (4-D, ``(W, H, S, T)``), without writing it: callers validate everything before a write."""
    path = Path(path)
    arr = _prepare(arr, path)
    if arr.ndim not in (3, 4):
        raise InputError(f"{path}: NIfTI export needs [S, H, W] or [T, S, H, W], got shape {arr.shape}")
    vs = _voxels(voxel_size)
    aff = axial_affine(arr.shape[-3:], vs) if affine is None else np.asarray(affine, float)
    if aff.shape != (4, 4):
        raise InputError(f"affine must be 4×4, got {aff.shape}")
    data = np.transpose(arr, (2, 1, 0) if arr.ndim == 3 else (3, 2, 1, 0))  # (W, H, S[, T])
    img = nib.Nifti1Image(np.ascontiguousarray(data), aff)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    img.header.set_zooms([vs[2], vs[1], vs[0]] + ([float(frame_duration_s)] if arr.ndim == 4 else []))
    img.header["descrip"] = description[:79].encode("ascii", "replace")
    payload = img.to_bytes()
    return gzip.compress(payload, mtime=0) if path.name.endswith(".gz") else payload


def export_nifti(image: Any, path: str | os.PathLike, voxel_size: Sequence[float] = (1.0, 1.0, 1.0), *,
                 affine: np.ndarray | None = None, frames: bool = False, frame_duration_s: float = 1.0,
                 description: str = "molrecon reconstruction") -> Path:
    """Write the magnitude of ``image`` to ``path`` (``.nii`` or ``.nii.gz``) atomically; return the path.

    ``image`` (numpy or torch, complex → magnitude): ``[H, W]``, ``[S, H, W]`` / ``[D, H, W]``, or with
    ``frames=True`` a 2D+time series ``[T, H, W]`` (written 4-D as ``(W, H, 1, T)``).
    ``voxel_size`` is in array order ``(slice, row, column)`` mm (a 2-tuple means ``(row, column)``).
    """
    path = Path(path)
    arr = _prepare(image, path)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"{path}: export_nifti needs [H, W], [S, H, W] or [T, H, W], got shape {arr.shape}")
    if frames:
        arr = arr[:, None]  # [T, 1, H, W]
    payload = nifti_bytes(arr, path, voxel_size, affine=affine, frame_duration_s=frame_duration_s,
                          description=description)
    with atomic_write(path, "wb") as fh:
        fh.write(payload)
    return path


def voxel_size_of(attrs: dict[str, Any], header: str | None, dims: str) -> tuple[tuple[float, float, float], str]:
    """``((slice, row, column) mm, source)`` of a fastMRI-layout file: ``voxel_size_mm``, else the header.

    For 3D, "slice" is the first spatial axis ``D``; for 2D and 2D+t it is the slice thickness. The header's
    encoded space is ``(x = readout = rows, y = phase = columns, z)`` (fastMRI); ``source`` is
    ``"voxel_size_mm"``, ``"ismrmrd_header"`` or ``"default 1 mm"``.
    """
    v = attrs.get("voxel_size_mm")
    if v is not None:
        vs = np.asarray(v, dtype=float).ravel()
        if vs.size in (2, 3) and np.isfinite(vs).all() and (vs > 0).all():
            return _voxels(vs.tolist()), "voxel_size_mm"
    if header:
        try:
            enc = parse_header(header)
            (mx, my, mz), (fx, fy, fz) = enc.recon_matrix, enc.recon_fov_mm
            vs = (fz / max(mz, 1), fx / mx, fy / my)
            if all(np.isfinite(vs)) and min(vs) > 0:
                return (float(vs[0]), float(vs[1]), float(vs[2])), "ismrmrd_header"
        except (InputError, ZeroDivisionError, TypeError, ValueError):
            pass
    return (1.0, 1.0, 1.0), "default 1 mm"


def recon_nifti_bytes(recon: np.ndarray, path: str | os.PathLike, dims: str,
                      voxel_size: Sequence[float] = (1.0, 1.0, 1.0), description: str = "molrecon reconstruction",
                      frame_duration_s: float = 1.0) -> bytes:
    """The NIfTI of a ``molrecon recon`` output ``[S, *spatial]`` of any layout (see the module docstring)."""
    arr = np.asarray(recon)
    want = 3 if dims == "2d" else 4
    if arr.ndim != want:
        raise InputError(f"{path}: a {dims} reconstruction must have {want} axes [S, *spatial], got {arr.shape}")
    if dims == "3d":
        arr = arr[0] if arr.shape[0] == 1 else arr  # volumes beyond the first become the 4th axis
    elif dims == "2d+t":
        arr = np.transpose(arr, (1, 0, 2, 3))  # [T, S, H, W]
    return nifti_bytes(arr, path, voxel_size, description=description, frame_duration_s=frame_duration_s)
