"""``molrecon evaluate``: score classical and learned methods over a dataset; write JSON, markdown and a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..evaluate.evaluation import SUMMARY_COLUMNS, evaluate, load_dataset, resolve_methods, summary_rows, write_report
from ..evaluate.report import markdown_table
from ..names import DIMS_OF_KIND
from .checks import check_output_dir

DEFAULT_CLASSICAL = ["zero-filled", "sense", "cs-wavelet"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate methods (classical, checkpoints, pretrained) on a dataset",
        description="Reconstruct every slice of a dataset with each method and report PSNR, SSIM and NMSE "
        "(magnitude, inside the object support, data range = target volume max, as fastMRI), iterations to "
        "convergence and time per slice: REPORT_DIR/report.json, report.md and figure.png.")
    p.add_argument("--checkpoint", action="append", default=[], type=Path, metavar="CKPT",
                   help="training checkpoint to evaluate (repeatable)")
    p.add_argument("--pretrained", action="append", default=[], metavar="NAME",
                   help="shipped pretrained model, e.g. mol-lr-2d-4x (repeatable; see `molrecon models`)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="classical methods to compare (zero-filled sense cs-wavelet cs-tv; a learned method "
                   "name means its <method>-2d-4x pretrained model); default: "
                   f"{' '.join(DEFAULT_CLASSICAL)}")
    p.add_argument("--data", default="builtin",
                   help="folder of multicoil HDF5 files (fastMRI layout) or 'builtin' (the built-in test split, "
                   "built if absent)")
    p.add_argument("--kind", default="2d", choices=list(DIMS_OF_KIND), help="built-in data kind")
    p.add_argument("--split", default="test", help="built-in split (train, val, test)")
    p.add_argument("--accel", type=float, default=None,
                   help="replace the files' stored masks by a seeded fastMRI-style mask at this acceleration "
                   "(needed for files without a stored mask)")
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--max-volumes", type=int, default=None, help="evaluate only the first N volumes")
    p.add_argument("--max-slices", type=int, default=None, help="evaluate only the first N slices")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.out, "--out")  # before hours of reconstruction, not after
    for name, value in (("--max-volumes", args.max_volumes), ("--max-slices", args.max_slices),
                        ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise InputError(f"{args.data}: {name} must be >= 1, got {value}")
    if args.accel is not None and not args.accel >= 1:
        raise InputError(f"{args.data}: --accel must be a number >= 1, got {args.accel}")
    methods = args.methods if args.methods is not None else DEFAULT_CLASSICAL
    runners = resolve_methods(methods, args.checkpoint, args.pretrained, device=args.device)
    dataset = load_dataset(args.data, kind=args.kind, split=args.split, acceleration=args.accel)
    description = (f"built-in {args.kind} '{args.split}' split (k-space simulated from images)"
                   if str(args.data) == "builtin" else f"{args.data}")
    print(f"evaluating {', '.join(r.name for r in runners)} on {description}", flush=True)
    results = evaluate(runners, dataset, batch_size=args.batch_size, device=args.device,
                       max_volumes=args.max_volumes, max_slices=args.max_slices)
    paths = write_report(results, args.out, title="molrecon evaluate", data_description=description)
    print()
    print(markdown_table(summary_rows(results), SUMMARY_COLUMNS))
    print(f"wrote {paths['json']}, {paths['markdown']}, {paths['figure']}")
    return 0
