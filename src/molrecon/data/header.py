"""ISMRMRD XML headers (through the ``ismrmrd`` package): building them for simulated data and reading the
encoding/recon matrices of real fastMRI files.

fastMRI convention: ``encodedSpace.matrixSize`` is ``(x = readout, y = phase encoding, z)`` of the acquired
(oversampled) k-space; ``reconSpace.matrixSize`` ``(x, y)`` is the size the vendor image — and fastMRI's
``reconstruction_rss`` target — is centre-cropped to (e.g. 640×368 acquired, 320×320 recon for knee).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ismrmrd.xsd as x

from ..errors import InputError


@dataclass(frozen=True)
class EncodingInfo:
    """The parts of an ISMRMRD header the loader needs."""

    encoded_matrix: tuple[int, int, int]
    recon_matrix: tuple[int, int, int]
    encoded_fov_mm: tuple[float, float, float]
    recon_fov_mm: tuple[float, float, float]
    num_coils: int | None

    @property
    def crop_size(self) -> tuple[int, int]:
        """fastMRI's target crop ``(reconSpace.x, reconSpace.y)``."""
        return self.recon_matrix[0], self.recon_matrix[1]


def make_header(matrix: tuple[int, int, int], fov_mm: tuple[float, float, float], num_coils: int,
                phase_steps: int, partition_steps: int = 1, repetitions: int = 1,
                description: str = "molrecon simulated") -> str:
    """A valid ISMRMRD XML header for Cartesian data of encoded size ``matrix`` ``(x=readout, y, z)``
    (recon space = encoded space: the simulation has no readout oversampling)."""
    size = x.matrixSizeType(x=int(matrix[0]), y=int(matrix[1]), z=int(matrix[2]))
    fov = x.fieldOfViewMm(x=float(fov_mm[0]), y=float(fov_mm[1]), z=float(fov_mm[2]))
    limits = x.encodingLimitsType(
        kspace_encoding_step_1=x.limitType(minimum=0, maximum=phase_steps - 1, center=phase_steps // 2),
        kspace_encoding_step_2=x.limitType(minimum=0, maximum=partition_steps - 1, center=partition_steps // 2),
        repetition=x.limitType(minimum=0, maximum=repetitions - 1, center=0),
    )
    enc = x.encodingType(encodedSpace=x.encodingSpaceType(matrixSize=size, fieldOfView_mm=fov),
                         reconSpace=x.encodingSpaceType(matrixSize=size, fieldOfView_mm=fov),
                         encodingLimits=limits, trajectory=x.trajectoryType.CARTESIAN)
    header = x.ismrmrdHeader(
        experimentalConditions=x.experimentalConditionsType(H1resonanceFrequency_Hz=127_728_000),
        acquisitionSystemInformation=x.acquisitionSystemInformationType(
            systemVendor="molrecon (simulated)", systemModel=description, systemFieldStrength_T=3.0,
            receiverChannels=int(num_coils)),
    )
    header.encoding.append(enc)
    return x.ToXML(header)


def parse_header(xml: str | bytes, path: str | Path = "<header>") -> EncodingInfo:
    """Parse an ISMRMRD XML header; a malformed one raises :class:`InputError` naming ``path``."""
    if isinstance(xml, bytes):
        xml = xml.decode("utf-8", errors="replace")
    try:
        hdr = x.CreateFromDocument(xml)
        enc = hdr.encoding[0]
        em, rm = enc.encodedSpace.matrixSize, enc.reconSpace.matrixSize
        ef, rf = enc.encodedSpace.fieldOfView_mm, enc.reconSpace.fieldOfView_mm
        coils = None
        if hdr.acquisitionSystemInformation is not None:
            coils = hdr.acquisitionSystemInformation.receiverChannels
        return EncodingInfo((int(em.x), int(em.y), int(em.z)), (int(rm.x), int(rm.y), int(rm.z)),
                            (float(ef.x), float(ef.y), float(ef.z)), (float(rf.x), float(rf.y), float(rf.z)),
                            None if coils is None else int(coils))
    except Exception as exc:  # the schema parser raises many exception types
        raise InputError(f"{path}: cannot parse 'ismrmrd_header' ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
