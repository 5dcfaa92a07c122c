"""``molrecon convert IN OUT``: move k-space between fastMRI HDF5, ISMRMRD and BART CFL; non-Cartesian HDF5
(``kspace`` on a ``trajectory``) converts to the non-Cartesian HDF5 layout, or (2D) to BART ``NAME.cfl`` +
``NAME_traj.cfl`` (+ ``NAME_maps.cfl``) for ``bart pics -t NAME_traj``.

The input format is found from the content and extension (see :mod:`molrecon.formats.detect`), the output
format from OUT's extension (``.h5``/``.hdf5`` fastMRI, ``.mrd`` ISMRMRD, ``.cfl`` BART) or ``--to``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..formats import WRITERS, output_format, read_maps, read_problem
from ..formats.noncartesian import write_noncartesian_cfl
from ..names import DIMS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert k-space between fastMRI HDF5, ISMRMRD and BART CFL",
                       description="Convert multicoil k-space between fastMRI HDF5 (.h5), ISMRMRD (.mrd) and "
                       "BART (.cfl/.hdr). Input format by content and extension; output by extension or --to.")
    p.add_argument("input", type=Path, help="input file (.h5/.hdf5/.mrd fastMRI or ISMRMRD, or BART .cfl)")
    p.add_argument("output", type=Path, help="output file (written atomically)")
    p.add_argument("--to", choices=["fastmri", "ismrmrd", "cfl", "noncartesian"], default=None,
                   help="output format (default: from the output's extension; .h5 keeps non-Cartesian data "
                   "non-Cartesian)")
    p.add_argument("--dims", choices=DIMS, default=None, help="layout of the input")
    p.add_argument("--maps", type=Path, default=None,
                   help="coil maps to carry along (BART .cfl, or an HDF5 file with a 'maps' dataset)")
    p.add_argument("--no-prewhiten", action="store_true",
                   help="ISMRMRD input: do not prewhiten with the noise scans")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    fmt = output_format(args.output, args.to)
    if args.output.resolve() == args.input.resolve():
        raise InputError(f"{args.output}: output would overwrite the input")
    problem = read_problem(args.input, args.dims, prewhiten=not args.no_prewhiten)
    if problem.is_noncartesian and fmt == "fastmri" and args.to is None:
        fmt = "noncartesian"
    writer = WRITERS.get(fmt)
    if problem.is_noncartesian and fmt == "cfl":
        writer = write_noncartesian_cfl  # NAME, NAME_traj (and NAME_maps) for bart pics -t
    elif problem.is_noncartesian != (fmt == "noncartesian"):
        what = "non-Cartesian" if problem.is_noncartesian else "Cartesian"
        raise InputError(f"{args.input}: {what} k-space cannot be written as {fmt} (non-Cartesian data go to the "
                         f"non-Cartesian HDF5 layout, .h5, or to BART .cfl with a trajectory)")
    if args.maps is not None:
        problem.maps = read_maps(args.maps, problem)
    out = writer(args.output, problem)
    shape = "x".join(map(str, problem.kspace.shape))
    print(f"wrote {out} ({fmt}, k-space {shape}, {problem.dims})")
    if fmt == "ismrmrd" and problem.maps is not None:
        print("note: ISMRMRD has no place for coil maps; they were not written")
    return 0
