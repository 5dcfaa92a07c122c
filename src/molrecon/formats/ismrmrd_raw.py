"""ISMRMRD raw data (``.mrd``/``.h5`` written by the vendors' converters or Gadgetron) through the ``ismrmrd``
package: Cartesian acquisitions placed into molrecon's k-space by their encoding counters, and the reverse.

Reading (:func:`read_ismrmrd`):

- Axes (``docs/conventions.md``): readout on the first spatial axis, then ``kspace_encode_step_1`` and, for 3D
  (``encodedSpace.matrixSize.z > 1``), ``kspace_encode_step_2``. Phases or repetitions become frames (2D+time);
  contrasts × slices become the batch axis; averages are averaged.
- An encode step ``e`` lands at ``e - limits.center + N // 2`` (``N`` the encoded matrix size), a readout sample
  ``j`` (after ``discard_pre``/``discard_post``) at ``j - center_sample + Nx // 2``, so partial-Fourier and
  asymmetric-echo data sit where they belong and the rest stays zero (and outside the mask).
- Readout oversampling (encoded FOV x larger than the recon FOV x) is removed by cropping the readout to the
  recon FOV in image space, as scanners do.
- The mask is the set of acquired imaging lines; lines flagged ``ACQ_IS_PARALLEL_CALIBRATION`` (calibration
  only) serve the coil-map estimate but stay out of the mask, and the width of the flagged calibration region
  becomes the ESPIRiT calibration width.
- Noise scans (``ACQ_IS_NOISE_MEASUREMENT``) prewhiten the data (:mod:`molrecon.formats.prewhiten`); navigator,
  phase-correction, dummy and feedback scans are skipped.
- Non-Cartesian trajectories are refused: molrecon has no non-Cartesian operator yet.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import ismrmrd
import ismrmrd.xsd
import numpy as np
import torch

from ..errors import InputError
from ..physics.fft import fft_centered, ifft_centered
from .prewhiten import apply_whitening, noise_covariance, whitening_matrix
from .problem import Geometry, RawProblem, compact_mask

_SKIP_FLAGS = ("ACQ_IS_NAVIGATION_DATA", "ACQ_IS_PHASECORR_DATA", "ACQ_IS_DUMMYSCAN_DATA",
               "ACQ_IS_HPFEEDBACK_DATA", "ACQ_IS_RTFEEDBACK_DATA", "ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA",
               "ACQ_IS_PHASE_STABILIZATION_REFERENCE", "ACQ_IS_PHASE_STABILIZATION")


def _open(path: Path):
    """The ``ismrmrd.Dataset`` of ``path`` (its first group holding an ``xml`` header), or one clear error."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as f:
            groups = [k for k in f if isinstance(f[k], h5py.Group) and "xml" in f[k]]
    except OSError as exc:
        reason = "truncated or corrupted HDF5 file" if h5py.is_hdf5(path) else "not an HDF5 file"
        raise InputError(f"{path}: {reason} ({str(exc).splitlines()[0]})") from None
    if not groups:
        raise InputError(f"{path}: no ISMRMRD dataset (no group with an 'xml' header)")
    try:
        return ismrmrd.Dataset(str(path), groups[0], create_if_needed=False)
    except Exception as exc:  # the package raises whatever h5py raises
        raise InputError(f"{path}: cannot open the ISMRMRD dataset ({type(exc).__name__}: {exc})") from None


def _read_all(path: Path):
    dset = _open(path)
    try:
        xml = dset.read_xml_header()
        xml = xml.decode("utf-8", errors="replace") if isinstance(xml, bytes) else str(xml)
        if "<encodingLimits" not in xml and "<encoding>" in xml:
            raise InputError(f"{path}: the header has no encodingLimits, so the acquisitions cannot be placed "
                             "in k-space")
        try:
            hdr = ismrmrd.xsd.CreateFromDocument(xml)
        except Exception as exc:
            raise InputError(f"{path}: cannot parse the ISMRMRD XML header ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        try:
            n = dset.number_of_acquisitions()
            acqs = [dset.read_acquisition(i) for i in range(n)]
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{path}: truncated or corrupted acquisitions ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    finally:
        dset.close()
    return xml, hdr, acqs


def _limit(limits, name: str):
    lim = getattr(limits, name, None) if limits is not None else None
    if lim is None:
        return 0, 0, 0
    return int(lim.minimum), int(lim.maximum), int(lim.center)


def _flag(acq, name: str) -> bool:
    return bool(acq.is_flag_set(getattr(ismrmrd, name)))


def _geometry(acq_by_batch: list, hdr_space, dims: str, shape: tuple[int, ...]) -> Geometry | None:
    """Geometry from the acquisitions' directions and positions (slice centres, LPS mm), where given."""
    first = acq_by_batch[0]
    read, phase, slc = (np.asarray(v[:], float) for v in (first.read_dir, first.phase_dir, first.slice_dir))
    if min(np.linalg.norm(read), np.linalg.norm(phase)) < 0.5:
        return None
    fov = hdr_space.fieldOfView_mm
    m = hdr_space.matrixSize
    vx, vy, vz = float(fov.x) / int(m.x), float(fov.y) / int(m.y), float(fov.z) / max(int(m.z), 1)
    if dims == "3d":  # image [D, H, W] = (readout, e1, e2): DICOM slices along the readout
        _, d, h, w = shape
        row, col, stack, voxel = phase, slc, read, (vx, vy, vz)
        centre = np.asarray(first.position[:], float)
        corner = centre - (d - 1) / 2 * vx * stack - (h - 1) / 2 * vy * row - (w - 1) / 2 * vz * col
        pos = tuple(tuple(corner + k * vx * stack) for k in range(d))
        return Geometry(voxel, tuple(row), tuple(col), pos)
    h, w = shape[-2:]
    row, col = read, phase
    pos = []
    for acq in acq_by_batch:
        centre = np.asarray(acq.position[:], float)
        pos.append(tuple(centre - (h - 1) / 2 * vx * row - (w - 1) / 2 * vy * col))
    if dims == "2d+t":
        pos = pos[:1]
    spacing = vz
    if len(pos) > 1:
        spacing = float(np.linalg.norm(np.asarray(pos[1]) - np.asarray(pos[0]))) or vz
    return Geometry((spacing, vx, vy), tuple(row), tuple(col), tuple(pos))


def read_ismrmrd(path: str | os.PathLike, dims: str | None = None, prewhiten: bool = True) -> RawProblem:
    """Read a Cartesian ISMRMRD file into a :class:`RawProblem` (see the module docstring for the rules)."""
    path = Path(path)
    xml, hdr, acqs = _read_all(path)
    if not hdr.encoding:
        raise InputError(f"{path}: the ISMRMRD header has no <encoding>")
    enc = hdr.encoding[0]
    traj = getattr(enc.trajectory, "value", enc.trajectory)
    if str(traj) != "cartesian":
        raise InputError(f"{path}: trajectory {traj!r} is not supported (molrecon reads Cartesian ISMRMRD only; "
                         "there is no non-Cartesian operator yet)")
    limits = enc.encodingLimits
    if limits is None or limits.kspace_encoding_step_1 is None:
        raise InputError(f"{path}: the header has no encodingLimits/kspace_encoding_step_1, so the acquisitions "
                         "cannot be placed in k-space")
    em, rm = enc.encodedSpace.matrixSize, enc.reconSpace.matrixSize
    nx, ny, nz = int(em.x), int(em.y), max(int(em.z), 1)
    _, _, c1 = _limit(limits, "kspace_encoding_step_1")
    _, _, c2 = _limit(limits, "kspace_encoding_step_2")

    noise, data_acqs = [], []
    for a in acqs:
        if _flag(a, "ACQ_IS_NOISE_MEASUREMENT"):
            noise.append(a.data)
        elif not any(_flag(a, f) for f in _SKIP_FLAGS):
            data_acqs.append(a)
    if not data_acqs:
        raise InputError(f"{path}: no imaging acquisitions (found {len(acqs)} acquisitions, "
                         f"{len(noise)} of them noise scans)")
    lengths = sorted({int(a.number_of_samples) for a in data_acqs})
    if len(lengths) > 1:
        raise InputError(f"{path}: mixed readout lengths {lengths} among the imaging acquisitions; molrecon "
                         "needs one readout length per file")
    coils = sorted({int(a.active_channels) for a in data_acqs})
    if len(coils) > 1:
        raise InputError(f"{path}: mixed channel counts {coils} among the imaging acquisitions")
    C = coils[0]

    frames_by = "phase" if max(a.idx.phase for a in data_acqs) > 0 else "repetition"
    T = 1 + max(getattr(a.idx, frames_by) for a in data_acqs)
    if nz > 1 and T > 1:
        raise InputError(f"{path}: 3D data with several {frames_by}s (3D+time) is not supported")
    if frames_by == "phase" and max(a.idx.repetition for a in data_acqs) > 0:
        raise InputError(f"{path}: both cardiac phases and repetitions vary; molrecon takes one of them as frames")
    found = "3d" if nz > 1 else ("2d+t" if T > 1 else "2d")
    if dims is not None and dims != found:
        raise InputError(f"{path}: the header and counters give a {found} layout, not --dims {dims}")
    n_slices = 1 + max(a.idx.slice for a in data_acqs)
    n_contrasts = 1 + max(a.idx.contrast for a in data_acqs)
    B = n_slices * n_contrasts
    spatial = (nx, ny, nz) if found == "3d" else ((T, nx, ny) if found == "2d+t" else (nx, ny))
    acc = np.zeros((B, C, *spatial), np.complex128)
    count = np.zeros((B, *spatial), np.int32)
    calib = np.zeros((B, *spatial), bool)
    calib_only = np.zeros((B, C, *spatial), np.complex128)
    first_of_batch: dict[int, object] = {}
    for a in data_acqs:
        samples = np.asarray(a.data)[:, a.discard_pre:int(a.number_of_samples) - a.discard_post]
        start = nx // 2 - (int(a.center_sample) - a.discard_pre)
        e1 = int(a.idx.kspace_encode_step_1) - c1 + ny // 2
        e2 = int(a.idx.kspace_encode_step_2) - c2 + nz // 2
        if start < 0 or start + samples.shape[1] > nx or not 0 <= e1 < ny or not 0 <= e2 < nz:
            raise InputError(f"{path}: acquisition {int(a.scan_counter)} (readout {samples.shape[1]} samples, "
                             f"centre {int(a.center_sample)}, e1 {int(a.idx.kspace_encode_step_1)}, e2 "
                             f"{int(a.idx.kspace_encode_step_2)}) falls outside the encoded matrix {nx}x{ny}x{nz}")
        b = int(a.idx.contrast) * n_slices + int(a.idx.slice)
        first_of_batch.setdefault(b, a)
        ro = slice(start, start + samples.shape[1])
        if found == "3d":
            where = (b, slice(None), ro, e1, e2)
        elif found == "2d+t":
            where = (b, slice(None), int(getattr(a.idx, frames_by)), ro, e1)
        else:
            where = (b, slice(None), ro, e1)
        is_cal = _flag(a, "ACQ_IS_PARALLEL_CALIBRATION")
        if is_cal or _flag(a, "ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING"):
            calib[(where[0], *where[2:])] = True
        if is_cal:
            calib_only[where] = samples
            continue
        acc[where] += samples
        count[(where[0], *where[2:])] += 1
    if count.sum() == 0:
        raise InputError(f"{path}: only calibration lines, no imaging lines")
    kspace = (acc / np.maximum(count, 1)[:, None]).astype(np.complex64)
    mask = (count > 0).astype(np.float32)
    calib_merged = np.where(calib[:, None] & (count[:, None] == 0), calib_only, kspace).astype(np.complex64)

    if prewhiten and noise:
        lens = {n.shape for n in noise}
        if len({s[0] for s in lens}) > 1 or next(iter(lens))[0] != C:
            raise InputError(f"{path}: noise scans have {sorted({s[0] for s in lens})} channels, data {C}")
        W = whitening_matrix(noise_covariance(np.concatenate(noise, axis=1)))
        kspace = apply_whitening(kspace, W)
        calib_merged = apply_whitening(calib_merged, W)

    kspace, calib_merged, mask = _remove_oversampling(kspace, calib_merged, mask, enc, found)
    calib_width = _calib_width(calib, found)
    mask = compact_mask(mask, found)
    geometry = _geometry([first_of_batch[b] for b in sorted(first_of_batch)], enc.encodedSpace, found,
                         kspace.shape[1:])
    attrs = {"source_format": "ismrmrd", "prewhitened": bool(prewhiten and noise), "noise_scans": len(noise),
             "encoded_matrix": [nx, ny, nz], "recon_matrix": [int(rm.x), int(rm.y), int(rm.z)]}
    return RawProblem(kspace=kspace, mask=mask, dims=found, source=path, calib_width=calib_width, header=xml,
                      attrs=attrs, geometry=geometry,
                      calib_kspace=calib_merged if (calib_merged != kspace).any() else None)


def _remove_oversampling(kspace: np.ndarray, calib: np.ndarray, mask: np.ndarray, enc, dims: str):
    """Crop the readout to the recon FOV in image space when the encoded FOV x is larger (oversampling)."""
    ef, rf = float(enc.encodedSpace.fieldOfView_mm.x), float(enc.reconSpace.fieldOfView_mm.x)
    nx = kspace.shape[2] if dims != "2d+t" else kspace.shape[3]
    keep = int(round(nx * rf / ef)) if ef > 0 and rf > 0 else nx
    if keep >= nx:
        return kspace, calib, mask
    axis = 2 if dims != "2d+t" else 3
    lo = (nx - keep) // 2

    def crop(k: np.ndarray) -> np.ndarray:
        img = ifft_centered(torch.from_numpy(k), (axis,))
        img = img.narrow(axis, lo, keep)
        return fft_centered(img, (axis,)).numpy().astype(np.complex64)

    m_axis = axis - 1  # mask is [B, *spatial]
    m = np.take(mask, np.arange(lo, lo + keep), axis=m_axis)
    return crop(kspace), crop(calib), m


def _calib_width(calib: np.ndarray, dims: str) -> int | None:
    """Contiguous width of the flagged calibration lines around the centre of encode step 1."""
    if not calib.any():
        return None
    e1_axis = -1 if dims != "3d" else -2
    lines = calib.any(axis=tuple(a for a in range(calib.ndim) if a != calib.ndim + e1_axis))
    centre = lines.shape[0] // 2
    if not lines[centre]:
        return None
    lo, hi = centre, centre
    while lo > 0 and lines[lo - 1]:
        lo -= 1
    while hi < lines.shape[0] - 1 and lines[hi + 1]:
        hi += 1
    return hi - lo + 1
