"""DICOM magnitude series (MR Image Storage, one file per slice or frame) through ``pydicom``.

Geometry comes from :class:`Geometry` (the raw file's positions and directions where it had them, else the
default axial one): ``ImagePositionPatient`` is the centre of the first pixel, ``ImageOrientationPatient`` the
directions of increasing column then increasing row (LPS), ``PixelSpacing`` ``(row spacing, column spacing)``.
The series is marked as derived (``ImageType DERIVED\\SECONDARY``) and, in its description and comments, as
not for diagnosis. UIDs are derived from the source name and the pixel data, so a rerun gives the same files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from ..errors import InputError
from .problem import Geometry

NOT_FOR_DIAGNOSIS = "molrecon research reconstruction - NOT FOR DIAGNOSTIC USE"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _uid(*parts: str) -> str:
    return generate_uid(entropy_srcs=list(parts))


def _slice(image: np.ndarray, k: int, geo: Geometry, uids: dict[str, str], scale: float, frames: bool,
           description: str, digest: str):
    sop = _uid(digest, "sop", str(k))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.Modality = "MR"
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.DerivationDescription = description[:1024]
    ds.SeriesDescription = ("molrecon NOT FOR DIAGNOSIS " + description)[:64]
    ds.ImageComments = NOT_FOR_DIAGNOSIS
    ds.BurnedInAnnotation = "NO"
    ds.PatientName, ds.PatientID = "ANONYMOUS", "molrecon"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, k + 1
    ds.Manufacturer = "molrecon"
    n = 0 if frames else k
    pos = np.asarray(geo.positions[n], float)
    ds.ImagePositionPatient = [f"{v:.6g}" for v in pos]
    ds.ImageOrientationPatient = [f"{v:.6g}" for v in (*geo.col_dir, *geo.row_dir)]
    vs, vh, vw = geo.voxel_mm
    ds.PixelSpacing = [f"{vh:.6g}", f"{vw:.6g}"]
    ds.SliceThickness = f"{vs:.6g}"
    ds.SpacingBetweenSlices = f"{vs:.6g}"
    ds.SliceLocation = f"{float(pos @ geo.slice_dir):.6g}"
    if frames:
        ds.TemporalPositionIdentifier = k + 1
        ds.NumberOfTemporalPositions = image.shape[0]
    ds.Rows, ds.Columns = image.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", f"{scale:.10g}", "US"
    pixels = np.clip(np.round(image[k] / scale), 0, 65535).astype(np.uint16)
    ds.PixelData = pixels.tobytes()
    return ds


def write_dicom_series(folder: str | os.PathLike, magnitude: np.ndarray, geometry: Geometry,
                       description: str = "reconstruction", source: str = "", frames: bool = False) -> Path:
    """Write ``magnitude`` ``[N, H, W]`` as a DICOM series in ``folder`` (``IM0001.dcm`` ...), atomically.

    The series is built in a temporary folder beside ``folder`` and swapped in at the end, so a failure leaves
    the previous content of ``folder`` as it was. ``frames=True``: the ``N`` images are time frames of one slice.
    """
    folder = Path(folder)
    img = np.abs(np.asarray(magnitude, dtype=np.float64))
    if img.ndim != 3:
        raise InputError(f"{folder}: a DICOM series needs images [N, H, W], got shape {img.shape}")
    if not np.isfinite(img).all():
        raise InputError(f"{folder}: image to write contains NaN or Inf values")
    if not frames and len(geometry.positions) != img.shape[0]:
        raise InputError(f"{folder}: geometry has {len(geometry.positions)} slice positions for {img.shape[0]} "
                         "images")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: --dicom needs a folder, and this is a file")
    peak = float(img.max())
    scale = peak / 65535 if peak > 0 else 1.0
    digest = hashlib.sha256(img.astype(np.float32).tobytes() + source.encode()).hexdigest()
    uids = {k: _uid(digest, k) for k in ("study", "series", "frame")}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        for k in range(img.shape[0]):
            ds = _slice(img, k, geometry, uids, scale, frames, description, digest)
            ds.save_as(tmp / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
