"""``molrecon recon``: reconstruct a multicoil HDF5 file (fastMRI layout) with a chosen method."""

from __future__ import annotations

import argparse
from pathlib import Path

CLASSICAL = ["zero-filled", "sense", "cs-wavelet", "cs-tv"]
LEARNED = ["mol-lr", "mol-sn", "modl", "deq"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recon", help="reconstruct undersampled multicoil k-space (HDF5, fastMRI layout)",
                       description="Reconstruct every slice (or volume) of a multicoil HDF5 file in the fastMRI "
                       "layout: 'kspace' [slices, coils, *spatial], optional 'maps' (else ESPIRiT) and 'mask' "
                       "(else the non-zero k-space locations).")
    p.add_argument("--method", required=True, choices=CLASSICAL + LEARNED)
    p.add_argument("--input", required=True, type=Path, help="input HDF5 file")
    p.add_argument("--out", required=True, type=Path, help="output HDF5 file (written atomically)")
    p.add_argument("--nifti", type=Path, default=None, help="also write the magnitude as NIfTI (.nii/.nii.gz)")
    p.add_argument("--lam", type=float, default=None, help="regularisation weight (classical methods)")
    p.add_argument("--max-iter", type=int, default=None, help="iterations (CG or CS)")
    p.add_argument("--dims", choices=["2d", "3d", "2d+t"], default=None,
                   help="spatial layout of 3 spatial axes (default: the file's 'dims' attribute, else 3d)")
    p.add_argument("--calib-width", type=int, default=24, help="ESPIRiT calibration width when maps are absent")
    p.add_argument("--checkpoint", type=Path, default=None, help="training checkpoint (learned methods)")
    p.add_argument("--pretrained", default=None, help="shipped pretrained model name (learned methods)")
    p.set_defaults(func=run)


def load_problem(path: Path, dims: str | None = None, calib_width: int = 24):
    """Read a file and return ``(kspace [S,C,*sp], maps [S,C,*sp], mask, dims, data)`` as torch tensors."""
    import numpy as np
    import torch

    from ..io import read_kspace_file
    from ..physics import check_maps_normalised, estimate_coil_maps

    data = read_kspace_file(path)
    kspace = torch.from_numpy(data["kspace"])
    if dims is None:
        attr = data["attrs"].get("dims")
        dims = attr.decode() if isinstance(attr, bytes) else attr
    if dims is None:
        dims = "2d" if kspace.ndim == 4 else "3d"
    if data["mask"] is not None:
        mask = torch.from_numpy(data["mask"])
    else:
        sampled = np.abs(data["kspace"]).sum(axis=(0, 1)) > 0
        mask = torch.from_numpy(sampled.astype(np.float32))
    if data["maps"] is not None:
        maps = torch.from_numpy(data["maps"])
        check_maps_normalised(maps, source=f"{path}: maps")
    else:
        maps = estimate_coil_maps(kspace, calib_width=calib_width, dims=dims)
    return kspace, maps, mask, dims, data


def _mask_for_slice(mask, index: int, kspace_ndim: int):
    """Slice a per-slice mask ``[S, ...]`` of the same rank as k-space; keep a shared one."""
    if mask.ndim == kspace_ndim and mask.shape[0] > 1:
        return mask[index:index + 1]
    return mask


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from .. import __version__
    from ..errors import InputError
    from ..io import write_h5_atomic
    from ..physics import MultiCoilMRI
    from ..recon import DEFAULT_LAM, reconstruct

    if args.method in LEARNED and args.checkpoint is None and args.pretrained is None:
        raise InputError(f"--method {args.method} needs --checkpoint CKPT or --pretrained NAME")
    kspace, maps, mask, dims, data = load_problem(args.input, args.dims, args.calib_width)
    model = None
    if args.method in LEARNED:
        from ..models.loading import load_learned_model

        model = load_learned_model(args.method, checkpoint=args.checkpoint, pretrained=args.pretrained)
    kwargs: dict = {}
    if args.method in DEFAULT_LAM:
        kwargs["lam"] = DEFAULT_LAM[args.method] if args.lam is None else args.lam
    if args.max_iter is not None and args.method != "zero-filled":
        kwargs["max_iter"] = args.max_iter
    out = []
    for s in tqdm(range(kspace.shape[0]), desc=f"{args.method}", unit="slice", disable=kspace.shape[0] < 2):
        physics = MultiCoilMRI(maps[s:s + 1] if maps.shape[0] > 1 else maps, _mask_for_slice(mask, s, kspace.ndim),
                               dims=dims)
        y = physics.mask * kspace[s:s + 1]
        if model is None:
            x = reconstruct(args.method, y, physics, **kwargs)
        else:
            with torch.no_grad():
                x = model(y, physics)
        out.append(x[0].detach().cpu().numpy())
    recon = np.stack(out).astype(np.complex64)
    attrs = {"method": args.method, "source": str(args.input), "dims": dims, "molrecon_version": __version__}
    attrs.update({k: v for k, v in kwargs.items()})
    write_h5_atomic(args.out, {"reconstruction": np.abs(recon).astype(np.float32),
                               "reconstruction_complex": recon}, attrs)
    print(f"wrote {args.out} ({recon.shape[0]} x {'x'.join(map(str, recon.shape[1:]))}, {args.method})")
    if args.nifti is not None:
        from ..data import export_nifti

        export_nifti(np.abs(recon), args.nifti)
        print(f"wrote {args.nifti}")
    return 0
