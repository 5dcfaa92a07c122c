"""Reading and writing the file formats of the field: fastMRI HDF5, ISMRMRD raw data, BART CFL/HDR, DICOM.

:func:`read_problem` picks the reader by content and extension; :func:`load_problem` also returns torch
tensors with coil maps (from the file, a separate file, or ESPIRiT). See ``docs/formats.md``.
"""

from .cfl import bart_to_molrecon, molrecon_to_bart, read_cfl, write_cfl, write_cfl_image
from .detect import FORMATS, WRITERS, detect_format, load_problem, output_format, read_maps, read_problem
from .dicom import write_dicom_series
from .problem import Geometry, RawProblem

__all__ = [
    "read_cfl", "write_cfl", "write_cfl_image", "bart_to_molrecon", "molrecon_to_bart", "detect_format",
    "read_problem", "read_maps", "load_problem", "output_format", "FORMATS", "WRITERS", "write_dicom_series",
    "Geometry", "RawProblem",
]
