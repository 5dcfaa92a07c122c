"""Write a problem as an ISMRMRD file, acquisition by acquisition, through the ``ismrmrd`` package.

One acquisition per acquired line (per slice, frame and encode step); lines inside the fully sampled centre are
flagged ``ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING``; noise samples, when given, go first as noise scans.
Directions and positions follow the problem's geometry (default: axial, see :class:`Geometry`).
"""

from __future__ import annotations

import os
from pathlib import Path

import ismrmrd
import ismrmrd.xsd as x
import numpy as np

from ..errors import InputError
from ..io import atomic_path
from .problem import RawProblem


def _centre_run(line_mask: np.ndarray) -> tuple[int, int]:
    """``[lo, hi)`` of the contiguous run of acquired lines through the centre (empty if the centre is not)."""
    c = line_mask.shape[0] // 2
    if not line_mask[c]:
        return c, c
    lo, hi = c, c
    while lo > 0 and line_mask[lo - 1]:
        lo -= 1
    while hi < line_mask.shape[0] - 1 and line_mask[hi + 1]:
        hi += 1
    return lo, hi + 1


def build_header(problem: RawProblem, fov_mm: tuple[float, float, float], n_frames: int) -> str:
    """An ISMRMRD XML header for ``problem``'s k-space (encoded = recon space: no oversampling)."""
    sp = problem.kspace.shape[2:]
    nx, ny, nz = (sp[1], sp[2], 1) if problem.dims == "2d+t" else (*sp, 1)[:3]
    S, C = problem.kspace.shape[:2]
    size = x.matrixSizeType(x=int(nx), y=int(ny), z=int(nz))
    fov = x.fieldOfViewMm(x=float(fov_mm[0]), y=float(fov_mm[1]), z=float(fov_mm[2]))

    def lim(n: int, centre: int | None = None) -> object:
        return x.limitType(minimum=0, maximum=max(n - 1, 0), center=n // 2 if centre is None else centre)

    limits = x.encodingLimitsType(kspace_encoding_step_1=lim(ny), kspace_encoding_step_2=lim(nz),
                                  slice=lim(S, 0), repetition=lim(n_frames, 0))
    enc = x.encodingType(encodedSpace=x.encodingSpaceType(matrixSize=size, fieldOfView_mm=fov),
                         reconSpace=x.encodingSpaceType(matrixSize=size, fieldOfView_mm=fov),
                         encodingLimits=limits, trajectory=x.trajectoryType.CARTESIAN)
    hdr = x.ismrmrdHeader(acquisitionSystemInformation=x.acquisitionSystemInformationType(
        systemVendor="molrecon", receiverChannels=int(C)),
        experimentalConditions=x.experimentalConditionsType(H1resonanceFrequency_Hz=127_728_000))
    hdr.encoding.append(enc)
    return x.ToXML(hdr)


def write_ismrmrd(path: str | os.PathLike, problem: RawProblem, noise: np.ndarray | None = None) -> Path:
    """Write ``problem`` (acquired lines only) as an ISMRMRD file at ``path``, atomically.

    ``noise`` ``[C, n]``: noise samples written as one noise scan per 128 samples before the data.
    """
    path = Path(path)
    k, dims = problem.kspace, problem.dims
    S, C = k.shape[:2]
    mask = np.broadcast_to(np.asarray(problem.mask, np.float32), k.shape)[:, 0] > 0  # [S, *spatial]
    if dims == "2d+t":
        T, nx, ny, nz = k.shape[2], k.shape[3], k.shape[4], 1
    elif dims == "3d":
        T, (nx, ny, nz) = 1, k.shape[2:]
    else:
        T, (nx, ny), nz = 1, k.shape[2:], 1
    geo = problem.image_geometry()
    vs, vh, vw = geo.voxel_mm
    row, col = np.asarray(geo.row_dir), np.asarray(geo.col_dir)
    normal = geo.slice_dir
    if dims == "3d":  # image [D, H, W] = (readout, e1, e2): the readout runs along the stack
        fov = (nx * vs, ny * vh, nz * vw)
        read_dir, phase_dir, slice_dir = normal, row, col
        half = (nx - 1) / 2 * vs * normal + (ny - 1) / 2 * vh * row + (nz - 1) / 2 * vw * col
    else:
        fov = (nx * vh, ny * vw, vs)
        read_dir, phase_dir, slice_dir = row, col, normal
        half = (nx - 1) / 2 * vh * row + (ny - 1) / 2 * vw * col
    xml = build_header(problem, fov, T)
    lines = mask.any(axis=2 if dims == "2d+t" else 1)  # [S, (T,) ny(, nz)]: line acquired at any readout point
    if dims == "3d":
        full = lines[:, :, nz // 2].all(axis=0)
    else:
        full = lines.reshape(-1, ny).all(axis=0)
    acs_lo, acs_hi = _centre_run(full)
    counter = 0
    with atomic_path(path) as tmp:
        tmp.unlink()  # the ismrmrd package creates the HDF5 file itself
        dset = ismrmrd.Dataset(str(tmp), "dataset", create_if_needed=True)
        try:
            dset.write_xml_header(xml)
            if noise is not None:
                noise = np.asarray(noise, np.complex64)
                if noise.ndim != 2 or noise.shape[0] != C:
                    raise InputError(f"{path}: noise must be [{C} coils, n], got {noise.shape}")
                for start in range(0, noise.shape[1], 128):
                    acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(noise[:, start:start + 128]))
                    acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
                    acq.scan_counter = counter
                    counter += 1
                    dset.append_acquisition(acq)
            for s in range(S):
                centre = np.asarray(geo.positions[min(s, len(geo.positions) - 1)]) + half
                for t in range(T):
                    for e2 in range(nz):
                        for e1 in range(ny):
                            if dims == "2d+t":
                                if not lines[s, t, e1]:
                                    continue
                                data = k[s, :, t, :, e1]
                            elif dims == "3d":
                                if not lines[s, e1, e2]:
                                    continue
                                data = k[s, :, :, e1, e2]
                            else:
                                if not lines[s, e1]:
                                    continue
                                data = k[s, :, :, e1]
                            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data, np.complex64))
                            acq.center_sample = nx // 2
                            acq.idx.kspace_encode_step_1 = e1
                            acq.idx.kspace_encode_step_2 = e2
                            acq.idx.slice = s
                            acq.idx.repetition = t
                            acq.scan_counter = counter
                            counter += 1
                            acq.read_dir[:] = [float(v) for v in read_dir]
                            acq.phase_dir[:] = [float(v) for v in phase_dir]
                            acq.slice_dir[:] = [float(v) for v in slice_dir]
                            acq.position[:] = centre.tolist()
                            if acs_lo <= e1 < acs_hi:
                                acq.set_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
                            dset.append_acquisition(acq)
        finally:
            dset.close()
    return path
