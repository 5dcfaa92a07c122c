"""``molrecon info``: describe a multicoil HDF5 file (shapes, coils, sampling, header)."""

from __future__ import annotations

import argparse
from pathlib import Path

import ismrmrd.xsd
import numpy as np
import torch

from ..errors import InputError
from ..io import open_h5
from ..physics import achieved_acceleration
from .checks import inspect_kspace_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a multicoil HDF5 file")
    p.add_argument("file", type=Path)
    p.set_defaults(func=run)


def _header_summary(header: str) -> str:
    try:
        hdr = ismrmrd.xsd.CreateFromDocument(header)
        enc = hdr.encoding[0]
        e, r = enc.encodedSpace, enc.reconSpace
        return (f"encoded matrix {e.matrixSize.x}x{e.matrixSize.y}x{e.matrixSize.z}, "
                f"FOV {e.fieldOfView_mm.x:g}x{e.fieldOfView_mm.y:g}x{e.fieldOfView_mm.z:g} mm; "
                f"recon matrix {r.matrixSize.x}x{r.matrixSize.y}x{r.matrixSize.z}")
    except Exception as exc:  # a header we cannot parse is reported, not fatal
        return f"unparsable ({type(exc).__name__})"


def run(args: argparse.Namespace) -> int:
    """Describe the file from its metadata; only the mask (or, without one, the first coil of the first slice)
    and the header are read, so a file of any size is described in a moment."""
    layout = inspect_kspace_file(args.file, check_size=False)
    shape = layout["kspace"][0]
    spatial = shape[2:]
    with open_h5(args.file) as f:
        keys = {k: (getattr(f[k], "shape", None), str(getattr(f[k], "dtype", "group"))) for k in f.keys()}
        try:
            mask = np.asarray(f["mask"][()], dtype=np.float32) if layout["mask"] is not None else None
            first = f["kspace"][0, 0] if mask is None else None
            header = f["ismrmrd_header"][()] if "ismrmrd_header" in f else None
        except OSError as exc:
            raise InputError(f"{args.file}: truncated or corrupted HDF5 file ({str(exc).splitlines()[0]})") from None
        attrs = dict(f.attrs)
    print(f"file: {args.file}")
    for name, (kshape, dtype) in keys.items():
        print(f"  {name}: {tuple(kshape) if kshape is not None else '(group)'} {dtype}")
    print(f"slices: {shape[0]}, coils: {shape[1]}, spatial: {tuple(spatial)}")
    if mask is not None:
        m = torch.from_numpy(mask)
        try:
            grid = m.reshape(m.shape[-len(spatial):]) if m.ndim >= len(spatial) else m
            print(f"mask: {tuple(mask.shape)}, acceleration {achieved_acceleration(grid, spatial):.2f}x")
        except (RuntimeError, ValueError, InputError):
            print(f"mask: {tuple(mask.shape)} (does not fit the k-space {tuple(spatial)})")
    else:
        sampled = np.abs(first) > 0
        print(f"mask: none (k-space non-zeros of slice 0, coil 0 give {sampled.size / max(sampled.sum(), 1):.2f}x)")
    print(f"maps: {'present' if layout['maps'] is not None else 'absent (recon estimates them by ESPIRiT)'}")
    if isinstance(header, bytes):
        header = header.decode("utf-8", errors="replace")
    if header:
        print(f"ismrmrd_header: {_header_summary(str(header))}")
    for key, value in attrs.items():
        print(f"  attr {key}: {value}")
    return 0
