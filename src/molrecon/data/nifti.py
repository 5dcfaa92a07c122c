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
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError


def axial_affine(shape_shw: Sequence[int], voxel_size: Sequence[float]) -> np.ndarray:
    """The default voxel→RAS+ affine for data written as ``(w, h, s)`` (see the module docstring)."""
    s, h, w = (int(n) for n in shape_shw)
    vs, vh, vw = (float(v) for v in voxel_size)
    a = np.diag([-vw, -vh, vs, 1.0])
    centre = np.array([(w - 1) / 2, (h - 1) / 2, (s - 1) / 2])
    a[:3, 3] = -a[:3, :3] @ centre
    return a


def export_nifti(image: Any, path: str | os.PathLike, voxel_size: Sequence[float] = (1.0, 1.0, 1.0), *,
                 affine: np.ndarray | None = None, frames: bool = False, frame_duration_s: float = 1.0,
                 description: str = "molrecon reconstruction") -> Path:
    """Write the magnitude of ``image`` to ``path`` (``.nii`` or ``.nii.gz``) atomically; return the path.

    ``image`` (numpy or torch, complex → magnitude): ``[H, W]``, ``[S, H, W]`` / ``[D, H, W]``, or with
    ``frames=True`` a 2D+time series ``[T, H, W]`` (written 4-D as ``(W, H, 1, T)``).
    ``voxel_size`` is in array order ``(slice, row, column)`` mm (a 2-tuple means ``(row, column)``).
    """
    import nibabel as nib

    from ..io import atomic_write

    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise InputError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"export_nifti needs [H, W], [S, H, W] or [T, H, W], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: image to export contains NaN or Inf values")
    voxel_size = tuple(float(v) for v in voxel_size)
    if len(voxel_size) == 2:
        voxel_size = (1.0, *voxel_size)
    if len(voxel_size) != 3 or min(voxel_size) <= 0:
        raise InputError(f"voxel_size must be 2 or 3 positive numbers (mm), got {voxel_size}")
    arr = arr.astype(np.float32)
    if frames:
        data = np.transpose(arr, (2, 1, 0))[:, :, None, :]  # (W, H, 1, T)
        aff = axial_affine((1, *arr.shape[1:]), voxel_size) if affine is None else np.asarray(affine, float)
    else:
        data = np.transpose(arr, (2, 1, 0))  # (W, H, S)
        aff = axial_affine(arr.shape, voxel_size) if affine is None else np.asarray(affine, float)
    if aff.shape != (4, 4):
        raise InputError(f"affine must be 4×4, got {aff.shape}")
    img = nib.Nifti1Image(np.ascontiguousarray(data), aff)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    zooms = [voxel_size[2], voxel_size[1], voxel_size[0]] + ([frame_duration_s] if frames else [])
    img.header.set_zooms(zooms)
    img.header["descrip"] = description[:79].encode("ascii", "replace")
    payload = img.to_bytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    with atomic_write(path, "wb") as fh:
        fh.write(payload)
    return path
