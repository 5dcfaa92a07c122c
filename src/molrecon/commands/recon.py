"""``molrecon recon``: reconstruct a multicoil k-space file (fastMRI HDF5, ISMRMRD or BART CFL, docs/formats.md).

``--input`` may also be a folder: every ``*.h5``/``*.hdf5``/``*.mrd`` file in it is reconstructed into the ``--out``
folder under the same name. Launched with ``torchrun --nproc_per_node=N -m molrecon recon ...`` the files are
split across the ranks (rank ``r`` takes ``files[r::N]``, sorted by name); each output depends on its file only,
so the result does not depend on the number of processes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..names import CLASSICAL_METHODS as CLASSICAL
from ..names import DIMS
from ..names import LEARNED_METHODS as LEARNED


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recon", help="reconstruct undersampled multicoil k-space (fastMRI/ISMRMRD HDF5, BART CFL)",
                       description="Reconstruct every slice (or volume) of a multicoil HDF5 file in the fastMRI "
                       "layout: 'kspace' [slices, coils, *spatial], optional 'maps' (else ESPIRiT) and 'mask' "
                       "(else the non-zero k-space locations).")
    p.add_argument("--method", required=True, choices=[*CLASSICAL, *LEARNED])
    p.add_argument("--input", required=True, type=Path,
                   help="input k-space: fastMRI or ISMRMRD HDF5 (.h5/.mrd) or BART .cfl (see docs/formats.md), "
                   "or a folder of HDF5 files (split across ranks under torchrun)")
    p.add_argument("--out", required=True, type=Path,
                   help="output HDF5 file, or BART .cfl (complex image), written atomically; a folder when "
                   "--input is a folder")
    p.add_argument("--nifti", type=Path, default=None,
                   help="also write the magnitude as NIfTI (.nii/.nii.gz); a folder when --input is a folder")
    p.add_argument("--dicom", type=Path, default=None,
                   help="also write the magnitude as a DICOM series into this folder (single input file)")
    p.add_argument("--maps", type=Path, default=None,
                   help="coil maps (BART .cfl, or HDF5 with a 'maps' dataset); else the file's, else ESPIRiT")
    p.add_argument("--no-prewhiten", action="store_true",
                   help="ISMRMRD input: do not prewhiten with the noise scans")
    p.add_argument("--lam", type=float, default=None, help="regularisation weight (classical methods)")
    p.add_argument("--max-iter", type=int, default=None, help="iterations (CG or CS)")
    p.add_argument("--dims", choices=DIMS, default=None,
                   help="spatial layout of 3 spatial axes (default: the file's 'dims' attribute, else 3d)")
    p.add_argument("--calib-width", type=int, default=24, help="ESPIRiT calibration width when maps are absent")
    p.add_argument("--checkpoint", type=Path, default=None, help="training checkpoint (learned methods)")
    p.add_argument("--pretrained", default=None, help="shipped pretrained model name (learned methods)")
    p.set_defaults(func=run)


def _mask_for_slice(mask, index: int, kspace_ndim: int):
    """Slice a per-slice mask ``[S, ...]`` of the same rank as k-space; keep a shared one."""
    if mask.ndim == kspace_ndim and mask.shape[0] > 1:
        return mask[index:index + 1]
    return mask


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError

    if args.method in LEARNED and args.checkpoint is None and args.pretrained is None:
        raise InputError(f"--method {args.method} needs --checkpoint CKPT or --pretrained NAME")
    if args.input.is_dir():
        if args.dicom is not None or args.maps is not None:
            raise InputError(f"{args.input}: --dicom and --maps need a single input file, not a folder")
        return _run_folder(args)
    _recon_file(args, args.input, args.out, args.nifti, _load_model(args))
    return 0


def _load_model(args: argparse.Namespace):
    if args.method not in LEARNED:
        return None
    from ..weights.loading import load_learned_model

    return load_learned_model(args.method, checkpoint=args.checkpoint, pretrained=args.pretrained)


def _run_folder(args: argparse.Namespace) -> int:
    """Reconstruct every HDF5 file of ``args.input`` into the folder ``args.out``; split across torchrun ranks.

    A file that fails is reported (``error: FILE: ...``) and the others still run; the exit code is then 2.
    The final gathering of the per-rank errors doubles as the barrier that every rank waits at.
    """
    from .. import distributed as D
    from ..errors import InputError, MolreconError

    files = sorted(p for p in args.input.iterdir() if p.is_file() and p.suffix.lower() in (".h5", ".hdf5", ".mrd"))
    if not files:
        raise InputError(f"{args.input}: no .h5/.hdf5/.mrd files in this folder")
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"{args.out}: --input is a folder, so --out must be a folder (it is a file)")
    if args.nifti is not None and args.nifti.exists() and not args.nifti.is_dir():
        raise InputError(f"{args.nifti}: --input is a folder, so --nifti must be a folder (it is a file)")
    info = D.init_distributed("cpu")  # gloo: reconstruction runs on the CPU; the group only coordinates
    try:
        mine = D.shard(files, info.rank, info.world_size)
        args.out.mkdir(parents=True, exist_ok=True)
        if args.nifti is not None:
            args.nifti.mkdir(parents=True, exist_ok=True)
        errors: list[str] = []
        model = None
        try:  # a failure on one rank must still reach the gathering below, or the others would wait forever
            model = _load_model(args) if mine else None
        except MolreconError as exc:
            errors.append(str(exc))
            mine = []
        for path in mine:
            nifti = args.nifti / f"{path.stem}.nii.gz" if args.nifti is not None else None
            try:
                _recon_file(args, path, args.out / path.name, nifti, model, quiet=not info.is_main)
            except MolreconError as exc:
                msg = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
                errors.append(msg)
        if info.world_size > 1:
            gathered: list[list[str]] = [[] for _ in range(info.world_size)]
            import torch.distributed as dist

            dist.all_gather_object(gathered, errors)  # also the final barrier
            errors = [e for part in gathered for e in part]
    finally:
        D.cleanup(info)
    if not info.is_main:
        return 2 if errors else 0
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    done = len(files) - len(errors)
    print(f"reconstructed {done}/{len(files)} files into {args.out} ({args.method}, {info.world_size} process"
          f"{'es' if info.world_size > 1 else ''})")
    return 2 if errors else 0


def _recon_file(args: argparse.Namespace, input_path: Path, out_path: Path, nifti_path: Path | None, model,
                quiet: bool = False) -> None:
    """Reconstruct one file (every slice/volume) and write ``out_path`` (and the NIfTI) atomically."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from .._version import __version__
    from ..errors import InputError
    from ..formats import load_problem
    from ..io import write_h5_atomic
    from ..physics import MultiCoilMRI
    from ..recon import DEFAULT_LAM, reconstruct

    dicom = getattr(args, "dicom", None)
    if dicom is not None and dicom.exists() and not dicom.is_dir():
        raise InputError(f"{dicom}: --dicom needs a folder, and this is a file")
    kspace, maps, mask, dims, problem = load_problem(input_path, args.dims, args.calib_width,
                                                     maps_path=getattr(args, "maps", None),
                                                     prewhiten=not getattr(args, "no_prewhiten", False))
    if dicom is not None and dims != "2d" and kspace.shape[0] > 1:
        raise InputError(f"{input_path}: --dicom writes one series; this file holds {kspace.shape[0]} {dims} "
                         "volumes")
    kwargs: dict = {}
    if args.method in DEFAULT_LAM:
        kwargs["lam"] = DEFAULT_LAM[args.method] if args.lam is None else args.lam
    if args.max_iter is not None and args.method != "zero-filled":
        kwargs["max_iter"] = args.max_iter
    out = []
    for s in tqdm(range(kspace.shape[0]), desc=f"{args.method}", unit="slice",
                  disable=kspace.shape[0] < 2 or quiet):
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
    attrs = {"method": args.method, "source": str(input_path), "dims": dims, "molrecon_version": __version__}
    attrs.update({k: v for k, v in kwargs.items()})
    if out_path.suffix.lower() in (".cfl", ".hdr"):
        from ..formats import write_cfl_image

        out_path = write_cfl_image(out_path, recon, dims)
    else:
        write_h5_atomic(out_path, {"reconstruction": np.abs(recon).astype(np.float32),
                                   "reconstruction_complex": recon}, attrs)
    print(f"wrote {out_path} ({recon.shape[0]} x {'x'.join(map(str, recon.shape[1:]))}, {args.method})")
    if nifti_path is not None:
        from ..data import export_nifti

        export_nifti(np.abs(recon), nifti_path)
        print(f"wrote {nifti_path}")
    if dicom is not None:
        from ..formats import write_dicom_series

        stack = np.abs(recon) if dims == "2d" else np.abs(recon[0])
        write_dicom_series(dicom, stack, problem.image_geometry(), description=f"{args.method} reconstruction",
                           source=str(input_path), frames=dims == "2d+t")
        print(f"wrote {dicom} ({stack.shape[0]} DICOM images)")
