"""What every reader returns: one reconstruction problem in molrecon's shapes, plus the geometry of its images.

Shapes follow ``docs/conventions.md``: k-space ``[S, C, *spatial]`` complex64, the sampling mask broadcastable
to it, maps (when the file has them) like k-space. ``S`` counts slices (or volumes, or contrasts × slices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Where the voxels of an image stack ``[N, H, W]`` lie, in the patient frame (DICOM's LPS, millimetres).

    ``row_dir`` is the unit step of increasing row index ``h``, ``col_dir`` of increasing column index ``w``;
    ``positions[n]`` is the centre of voxel ``(n, 0, 0)``; ``voxel_mm`` is ``(slice, row, column)`` spacing.
    """

    voxel_mm: tuple[float, float, float]
    row_dir: tuple[float, float, float]
    col_dir: tuple[float, float, float]
    positions: tuple[tuple[float, float, float], ...]

    @staticmethod
    def axial(shape_nhw: tuple[int, int, int], voxel_mm: tuple[float, float, float]) -> Geometry:
        """molrecon's default (as :mod:`molrecon.data.nifti`): row 0 anterior, column 0 the patient's right,
        slices inferior → superior, the centre of the stack at the origin."""
        n, h, w = shape_nhw
        vs, vh, vw = voxel_mm
        x0, y0 = -(w - 1) / 2 * vw, -(h - 1) / 2 * vh
        pos = tuple((x0, y0, (k - (n - 1) / 2) * vs) for k in range(n))
        return Geometry((float(vs), float(vh), float(vw)), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0), pos)

    @property
    def slice_dir(self) -> np.ndarray:
        """Unit normal of the slices, in the direction of increasing slice index when it is known."""
        normal = np.cross(np.asarray(self.col_dir), np.asarray(self.row_dir))
        if len(self.positions) > 1:
            step = np.asarray(self.positions[-1]) - np.asarray(self.positions[0])
            if float(step @ normal) < 0:
                normal = -normal
        return normal


@dataclass
class RawProblem:
    """A reconstruction problem as read from a file (numpy arrays; see the module docstring for shapes)."""

    kspace: np.ndarray
    mask: np.ndarray
    dims: str
    source: Path
    maps: np.ndarray | None = None
    calib_width: int | None = None  # width of the fully sampled calibration region, when the file says
    calib_kspace: np.ndarray | None = None  # k-space with calibration-only lines filled in, for coil maps
    header: str | None = None  # ISMRMRD XML
    attrs: dict[str, Any] = field(default_factory=dict)
    geometry: Geometry | None = None
    # non-Cartesian files (formats/noncartesian.py): samples on a trajectory in pixels, the image matrix, dcf
    trajectory: np.ndarray | None = None
    matrix: tuple[int, ...] | None = None
    dcf: np.ndarray | None = None

    @property
    def is_noncartesian(self) -> bool:
        return self.trajectory is not None

    def image_geometry(self) -> Geometry:
        """The file's geometry, else the default axial one with the file's voxel size (else 1 mm)."""
        if self.geometry is not None:
            return self.geometry
        spatial = self.kspace.shape[2:] if self.matrix is None else tuple(self.matrix)
        if self.matrix is not None and self.dims == "2d+t":
            spatial = (self.kspace.shape[2], *spatial)
        n, h, w = (self.kspace.shape[0], *spatial) if self.dims == "2d" else spatial
        voxel = self.attrs.get("voxel_size_mm")
        voxel = tuple(float(v) for v in np.asarray(voxel).ravel()) if voxel is not None else (1.0, 1.0, 1.0)
        if len(voxel) != 3 or min(voxel) <= 0:
            voxel = (1.0, 1.0, 1.0)
        if self.dims == "2d+t":
            n = 1
        return Geometry.axial((n, h, w), voxel)


def compact_mask(mask: np.ndarray, dims: str) -> np.ndarray:
    """``[B, *spatial]`` → the smallest shape broadcastable to k-space that holds the same pattern."""
    if (mask == mask[:1]).all():
        m = mask[0]
        ro = 0 if dims != "2d+t" else 1
        if (m == np.take(m, [0], axis=ro)).all() and m.take(0, axis=ro).any():
            return np.take(m, [0], axis=ro).astype(np.float32) if dims != "2d" else m[0].astype(np.float32)
        return m.astype(np.float32)
    return mask[:, None].astype(np.float32)
