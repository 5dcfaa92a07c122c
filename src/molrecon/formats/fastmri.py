"""The fastMRI multicoil HDF5 layout: ``kspace`` ``[slices, coils, *spatial]``, optional ``maps`` and ``mask``,
``ismrmrd_header`` and root attributes (validated by :func:`molrecon.io.read_kspace_file`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io import read_kspace_file, write_h5_atomic
from .problem import RawProblem


def read_fastmri(path: str | os.PathLike, dims: str | None = None) -> RawProblem:
    """Read a fastMRI-layout file. ``dims`` overrides the file's ``dims`` attribute (else 2d/3d by rank)."""
    path = Path(path)
    data = read_kspace_file(path)
    kspace = data["kspace"]
    if dims is None:
        attr = data["attrs"].get("dims")
        dims = attr.decode() if isinstance(attr, bytes) else attr
    if dims is None:
        dims = "2d" if kspace.ndim == 4 else "3d"
    mask = data["mask"]
    if mask is None:
        mask = (np.abs(kspace).sum(axis=(0, 1)) > 0).astype(np.float32)
    return RawProblem(kspace=kspace, mask=mask, dims=str(dims), source=path, maps=data["maps"],
                      header=data["header"], attrs=data["attrs"])


def write_fastmri(path: str | os.PathLike, problem: RawProblem) -> Path:
    """Write ``problem`` in the fastMRI layout (k-space zero outside the mask), atomically."""
    path = Path(path)
    mask = np.asarray(problem.mask, dtype=np.float32)
    datasets: dict = {"kspace": (problem.kspace * mask).astype(np.complex64), "mask": mask}
    if problem.maps is not None:
        datasets["maps"] = problem.maps.astype(np.complex64)
    if problem.header is not None:
        datasets["ismrmrd_header"] = problem.header
    attrs = {k: v for k, v in problem.attrs.items() if isinstance(v, (str, int, float, bool, np.generic, np.ndarray))}
    attrs.update({"dims": problem.dims, "source": str(problem.source)})
    write_h5_atomic(path, datasets, attrs)
    return path
