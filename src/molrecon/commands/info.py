"""``molrecon info``: describe a multicoil HDF5 file (shapes, coils, sampling, header)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a multicoil HDF5 file")
    p.add_argument("file", type=Path)
    p.set_defaults(func=run)


def _header_summary(header: str) -> str:
    try:
        import ismrmrd.xsd

        hdr = ismrmrd.xsd.CreateFromDocument(header)
        enc = hdr.encoding[0]
        e, r = enc.encodedSpace, enc.reconSpace
        return (f"encoded matrix {e.matrixSize.x}x{e.matrixSize.y}x{e.matrixSize.z}, "
                f"FOV {e.fieldOfView_mm.x:g}x{e.fieldOfView_mm.y:g}x{e.fieldOfView_mm.z:g} mm; "
                f"recon matrix {r.matrixSize.x}x{r.matrixSize.y}x{r.matrixSize.z}")
    except Exception as exc:  # a header we cannot parse is reported, not fatal
        return f"unparsable ({type(exc).__name__})"


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io import open_h5, read_kspace_file
    from ..physics import achieved_acceleration

    with open_h5(args.file) as f:
        keys = {k: (f[k].shape, str(f[k].dtype)) for k in f.keys()}
    data = read_kspace_file(args.file)
    k = data["kspace"]
    print(f"file: {args.file}")
    for name, (shape, dtype) in keys.items():
        print(f"  {name}: {tuple(shape)} {dtype}")
    print(f"slices: {k.shape[0]}, coils: {k.shape[1]}, spatial: {tuple(k.shape[2:])}")
    if data["mask"] is not None:
        import torch

        m = torch.from_numpy(data["mask"])
        spatial = k.shape[2:]
        grid = m.reshape(m.shape[-len(spatial):]) if m.ndim >= len(spatial) else m
        print(f"mask: {tuple(data['mask'].shape)}, acceleration {achieved_acceleration(grid, spatial):.2f}x")
    else:
        sampled = (np.abs(k).sum(axis=(0, 1)) > 0)
        print(f"mask: none (k-space non-zeros give {sampled.size / max(sampled.sum(), 1):.2f}x)")
    print(f"maps: {'present' if data['maps'] is not None else 'absent (recon estimates them by ESPIRiT)'}")
    if data["header"]:
        print(f"ismrmrd_header: {_header_summary(data['header'])}")
    for key, value in data["attrs"].items():
        print(f"  attr {key}: {value}")
    return 0
