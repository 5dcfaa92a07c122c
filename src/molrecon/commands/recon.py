"""``molrecon recon``: reconstruct a multicoil k-space file (fastMRI HDF5, non-Cartesian HDF5, ISMRMRD or BART CFL,
docs/formats.md). A non-Cartesian file (``kspace`` on a ``trajectory``) runs every method on the NUFFT operator
:class:`~molrecon.physics.NonCartesianMRI`, one per slice.

``--input`` may also be a folder: every ``*.h5``/``*.hdf5``/``*.mrd`` file in it is reconstructed into the ``--out``
folder under the same name. Launched with ``torchrun --nproc_per_node=N -m molrecon recon ...`` the files are
split across the ranks (rank ``r`` takes ``files[r::N]``, sorted by name); each output depends on its file only,
so the result does not depend on the number of processes.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .. import distributed as D
from .._version import __version__
from ..data.nifti import recon_nifti_bytes, voxel_size_of
from ..errors import InputError, MolreconError
from ..evaluate.methods import run as run_method
from ..formats import detect_format, load_problem, write_cfl_image, write_dicom_series
from ..formats.detect import slice_dcf, slice_trajectory
from ..io import atomic_path
from ..names import CLASSICAL_METHODS as CLASSICAL
from ..names import DIMS
from ..names import LEARNED_METHODS as LEARNED
from ..normalization import default_normalization, model_normalization
from ..physics import MultiCoilMRI, NonCartesianMRI
from ..recon import DEFAULT_LAM, default_lam
from ..weights.loading import resolve_model
from .checks import NIFTI_SUFFIXES, check_output_dir, check_output_file, inspect_kspace_file

#: what ``--out`` may be: fastMRI-style HDF5, or a BART complex image
OUT_SUFFIXES = (".h5", ".hdf5", ".cfl")
#: ESPIRiT's kernel width (``estimate_coil_maps``): the calibration region and the matrix must be at least this
ESPIRIT_KERNEL = 6


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recon", help="reconstruct undersampled multicoil k-space (fastMRI/ISMRMRD HDF5, BART CFL)",
                       description="Reconstruct every slice (or volume) of a multicoil HDF5 file in the fastMRI "
                       "layout: 'kspace' [slices, coils, *spatial], optional 'maps' (else ESPIRiT) and 'mask' "
                       "(else the non-zero k-space locations). Learned methods normalise the k-space to their "
                       "training scale and scale back, so any units work; the scale used is recorded in the output.")
    p.add_argument("--method", required=True, choices=CLASSICAL + LEARNED)
    p.add_argument("--input", required=True, type=Path,
                   help="input k-space: fastMRI, non-Cartesian (kspace + trajectory) or ISMRMRD HDF5 (.h5/.mrd) or "
                   "BART .cfl (see docs/formats.md), or a folder of HDF5 files (split across ranks under torchrun)")
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
    p.add_argument("--lam", type=float, default=None,
                   help="regularisation weight (classical methods), relative to the data: the weight at the "
                   "built-in scale, whatever the units of the k-space")
    p.add_argument("--max-iter", type=int, default=None, help="iterations (CG or CS), >= 1")
    p.add_argument("--dims", choices=DIMS, default=None,
                   help="spatial layout of 3 spatial axes (default: the file's 'dims' attribute, else 3d)")
    p.add_argument("--calib-width", type=int, default=24,
                   help=f"ESPIRiT calibration width when maps are absent (>= {ESPIRIT_KERNEL})")
    p.add_argument("--checkpoint", type=Path, default=None, help="training checkpoint (learned methods)")
    p.add_argument("--pretrained", default=None, help="shipped pretrained model name (learned methods)")
    p.set_defaults(func=run)


def _mask_for_slice(mask, index: int, kspace_ndim: int):
    """Slice a per-slice mask ``[S, ...]`` of the same rank as k-space; keep a shared one."""
    if mask.ndim == kspace_ndim and mask.shape[0] > 1:
        return mask[index:index + 1]
    return mask


def _slice_problem(data, kspace: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor, dims: str, s: int):
    """``(y, physics)`` of slice ``s``: the NUFFT operator on the slice's trajectory for a non-Cartesian file,
    else the Cartesian one (k-space zeroed outside the mask)."""
    maps_s = maps[s:s + 1] if maps.shape[0] > 1 else maps
    if data.is_noncartesian:
        dcf = slice_dcf(data, s)
        physics = NonCartesianMRI(maps_s, torch.from_numpy(np.ascontiguousarray(slice_trajectory(data, s))),
                                  dcf=None if dcf is None else torch.from_numpy(dcf), dims=dims)
        return kspace[s:s + 1], physics
    physics = MultiCoilMRI(maps_s, _mask_for_slice(mask, s, kspace.ndim), dims=dims)
    return physics.mask * kspace[s:s + 1], physics


def _check_args(args: argparse.Namespace) -> None:
    """Every argument value, before a file is opened; the error names the input it was given for."""
    problem = _argument_problem(args, math)
    if problem:
        raise InputError(f"{args.input}: {problem}")


def _argument_problem(args: argparse.Namespace, math) -> str | None:
    learned = args.method in LEARNED
    if learned and args.checkpoint is None and args.pretrained is None:
        return f"--method {args.method} needs --checkpoint CKPT or --pretrained NAME"
    if args.checkpoint is not None and args.pretrained is not None:
        return "give --checkpoint or --pretrained, not both"
    if not learned and (args.checkpoint is not None or args.pretrained is not None):
        given = "--checkpoint" if args.checkpoint is not None else "--pretrained"
        return f"{given} applies to the learned methods ({', '.join(LEARNED)}); {args.method} is classical"
    if learned and (args.lam is not None or args.max_iter is not None):
        given = "--lam" if args.lam is not None else "--max-iter"
        return f"{given} applies to the classical methods; a learned model's λ and iterations are its own"
    if args.lam is not None and not (math.isfinite(args.lam) and args.lam >= 0):
        return f"--lam must be a finite number >= 0, got {args.lam}"
    if args.input.is_dir() and (getattr(args, "dicom", None) is not None or getattr(args, "maps", None) is not None):
        return "--dicom and --maps need a single input file, not a folder"
    if args.max_iter is not None and args.max_iter < 1:
        return f"--max-iter must be >= 1, got {args.max_iter}"
    if args.calib_width < ESPIRIT_KERNEL:
        return f"--calib-width must be >= {ESPIRIT_KERNEL} (the ESPIRiT kernel width), got {args.calib_width}"
    return None


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.input.is_dir():
        return _run_folder(args)
    check_output_file(args.out, OUT_SUFFIXES, "--out", inputs=[args.input])
    if args.nifti is not None:
        check_output_file(args.nifti, NIFTI_SUFFIXES, "--nifti", inputs=[args.input, args.out])
    if args.dicom is not None:
        check_output_dir(args.dicom, "--dicom", inputs=[args.input])
    if detect_format(args.input) == "fastmri":
        inspect_kspace_file(args.input)
    _recon_file(args, args.input, args.out, args.nifti, _load_model(args))
    return 0


def _load_model(args: argparse.Namespace):
    if args.method not in LEARNED:
        return None
    return resolve_model(checkpoint=args.checkpoint, pretrained=args.pretrained, method=args.method).model


# what a failing file may raise besides MolreconError (sigpy, h5py, numpy); folder mode reports it and goes on
_FILE_ERRORS = (OSError, ValueError, RuntimeError, TypeError, KeyError, IndexError, MemoryError)


def _run_folder(args: argparse.Namespace) -> int:
    """Reconstruct every HDF5 file of ``args.input`` into the folder ``args.out``; split across torchrun ranks.

    A file that fails is reported (``error: FILE: ...``) and the others still run; the exit code is then 2.
    The final gathering of the per-rank errors doubles as the barrier that every rank waits at.
    """
    files = sorted(p for p in args.input.iterdir() if p.is_file() and p.suffix.lower() in (".h5", ".hdf5", ".mrd"))
    if not files:
        raise InputError(f"{args.input}: no .h5/.hdf5/.mrd files in this folder")
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"{args.out}: --input is a folder, so --out must be a folder (it is a file)")
    if args.nifti is not None and args.nifti.exists() and not args.nifti.is_dir():
        raise InputError(f"{args.nifti}: --input is a folder, so --nifti must be a folder (it is a file)")
    check_output_dir(args.out, "--out", inputs=[args.input])
    if args.nifti is not None:
        check_output_dir(args.nifti, "--nifti", inputs=[args.input])
    info = D.init_distributed("cpu")  # gloo: reconstruction runs on the CPU; the group only coordinates
    try:
        mine = D.shard(files, info.rank, info.world_size)
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
            except _FILE_ERRORS as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                errors.append(f"{path}: cannot reconstruct ({type(exc).__name__}: {first})")
        if info.world_size > 1:
            gathered: list[list[str]] = [[] for _ in range(info.world_size)]
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


def _load_checked(args: argparse.Namespace, input_path: Path):
    """``load_problem`` after the metadata checks; ESPIRiT failures become one line naming the file."""
    maps_path = getattr(args, "maps", None)
    if detect_format(input_path) == "fastmri":
        layout = inspect_kspace_file(input_path)
        spatial = layout["kspace"][0][2:]
        if layout["maps"] is None and maps_path is None and min(spatial) < ESPIRIT_KERNEL:
            raise InputError(f"{input_path}: no 'maps' and the matrix {spatial} is too small to estimate them by "
                             f"ESPIRiT (needs >= {ESPIRIT_KERNEL} along every axis); store 'maps' in the file")
    try:
        return load_problem(input_path, args.dims, args.calib_width, maps_path=maps_path,
                            prewhiten=not getattr(args, "no_prewhiten", False))
    except MolreconError:
        raise
    except (ValueError, RuntimeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{input_path}: cannot estimate coil maps by ESPIRiT ({first}); store 'maps' in the "
                         f"file or change --calib-width") from None


def _recon_file(args: argparse.Namespace, input_path: Path, out_path: Path, nifti_path: Path | None, model,
                quiet: bool = False) -> None:
    """Reconstruct one file (every slice/volume), then write ``out_path``, the NIfTI and the DICOM series: every
    output or none of them (a failure while writing one removes the temporaries of the others)."""
    check_output_file(out_path, OUT_SUFFIXES, "output", inputs=[input_path])
    if nifti_path is not None:
        check_output_file(nifti_path, NIFTI_SUFFIXES, "NIfTI output", inputs=[input_path, out_path])
    dicom = getattr(args, "dicom", None)
    kspace, maps, mask, dims, data = _load_checked(args, input_path)
    if dicom is not None and dims != "2d" and kspace.shape[0] > 1:
        raise InputError(f"{input_path}: --dicom writes one series; this file holds {kspace.shape[0]} {dims} "
                         "volumes")
    kwargs: dict = {}
    if args.max_iter is not None and args.method != "zero-filled":
        kwargs["max_iter"] = args.max_iter
    out, scales = [], []
    norm = None
    for s in tqdm(range(kspace.shape[0]), desc=f"{args.method}", unit="slice",
                  disable=kspace.shape[0] < 2 or quiet):
        y, physics = _slice_problem(data, kspace, maps, mask, dims, s)
        if args.method in DEFAULT_LAM:  # the default of the operator's own table (non-Cartesian: relative to ‖A‖²)
            kwargs["lam"] = default_lam(args.method, physics) if args.lam is None else args.lam
        x, _ = run_method(args.method if model is None else model, y, physics, **kwargs)
        with torch.no_grad():
            if model is None:
                norm = default_normalization(dims)  # what the classical solvers scale by (recon._data_scale)
            else:
                norm = model_normalization(model, physics)  # the factor the model applied (deterministic)
            scales.append(float(norm.factors(y, physics)[0]))
        out.append(x[0].detach().cpu().numpy())
    recon = np.stack(out).astype(np.complex64)
    if not np.isfinite(recon).all():
        raise InputError(f"{input_path}: the {args.method} reconstruction contains NaN or Inf values; nothing "
                         f"was written")
    attrs = {"method": args.method, "source": str(input_path), "dims": dims, "molrecon_version": __version__}
    attrs.update({k: v for k, v in kwargs.items()})
    if args.method != "zero-filled" and norm is not None:
        # x = f(c y) / c per slice: c brings the k-space to the method's reference scale
        attrs.update({"kspace_scale": np.asarray(scales, np.float64), "normalization_statistic": norm.statistic,
                      "normalization_reference": float(norm.reference)})
    payload = None
    if nifti_path is not None:
        voxel, source = voxel_size_of(data.attrs, data.header, dims)
        payload = recon_nifti_bytes(np.abs(recon), nifti_path, dims, voxel,
                                    description=f"molrecon {args.method}; voxels: {source}")
    cfl_out = out_path.suffix.lower() == ".cfl"
    with contextlib.ExitStack() as stack:  # leaving it renames the temporaries; an error removes them all
        tmp = stack.enter_context(atomic_path(out_path)) if not cfl_out else None
        tmp_nifti = stack.enter_context(atomic_path(nifti_path)) if payload is not None else None
        if tmp is not None:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("reconstruction", data=np.abs(recon).astype(np.float32))
                f.create_dataset("reconstruction_complex", data=recon)
                for key, value in attrs.items():
                    f.attrs[key] = value
        if tmp_nifti is not None:
            tmp_nifti.write_bytes(payload)
        # the DICOM series and the CFL pair are swapped in by their own writers: last, once the rest is ready
        if dicom is not None:
            stack_mag = np.abs(recon) if dims == "2d" else np.abs(recon[0])
            write_dicom_series(dicom, stack_mag, data.image_geometry(), description=f"{args.method} reconstruction",
                               source=str(input_path), frames=dims == "2d+t")
        if cfl_out:
            out_path = write_cfl_image(out_path, recon, dims)
    print(f"wrote {out_path} ({recon.shape[0]} x {'x'.join(map(str, recon.shape[1:]))}, {args.method})")
    if nifti_path is not None:
        print(f"wrote {nifti_path}")
    if dicom is not None:
        print(f"wrote {dicom} (DICOM series)")
