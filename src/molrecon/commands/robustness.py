"""``molrecon robustness``: worst-case and random perturbations, convergence, uniqueness, distribution shift and
certificates vs measurements for learned models; writes DIR/robustness.json, robustness.md and PNG plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..errors import InputError
from ..evaluate.report import markdown_table
from ..evaluate.robustness import (
    RobustnessConfig,
    load_examples,
    load_models,
    run_robustness,
    summary_rows,
    write_report,
)
from ..names import DIMS_OF_KIND
from ..physics import MultiCoilMRI, achieved_acceleration
from ..weights.pretrained import available_names, parse_name

DEFAULT_MODELS = "mol-sn-2d-4x,mol-lr-2d-4x,modl-2d-4x,deq-2d-4x"
PARTS = ("attack", "random", "convergence", "uniqueness", "shift")


def default_models(kind: str) -> str:
    """The models a study of ``kind`` compares by default: :data:`DEFAULT_MODELS` on 2D slices, the shipped
    learned models of the kind's dims (and trajectory) otherwise."""
    dims = DIMS_OF_KIND[kind]
    if dims == "2d":
        return DEFAULT_MODELS
    radial = kind.startswith("radial")
    names = [n for n in available_names() if (p := parse_name(n))["dims"] == dims
             and (p.get("trajectory") == "radial") == radial]
    if not names:
        raise InputError(f"robustness: no shipped model for the {kind!r} data; name some with --models")
    return ",".join(names)


def _floats(text: str, what: str) -> tuple[float, ...]:
    if text is None or str(text).strip() in ("", "none"):
        return ()
    try:
        return tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise InputError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "robustness", help="measure robustness and guarantees: attacks, convergence, uniqueness, shift",
        description="For each model: the worst-case k-space perturbation (projected gradient ascent through the "
        "reconstruction) and random ones of the same norms, with MOL's certified robustness constant beside the "
        "measured amplification; convergence far past the training iteration count; fixed points from several "
        "starts; PSNR under other accelerations and extra noise. Writes OUT/robustness.json, robustness.md and "
        "PNG plots. Built-in data is SIMULATED (inverse crime).")
    p.add_argument("--models", default=None,
                   help=f"comma-separated pretrained names or checkpoint paths (default: {DEFAULT_MODELS} for 2D "
                   "slices; the shipped models of the kind's dims otherwise, e.g. mol-sn-3d-4x,modl-3d-4x)")
    p.add_argument("--data", default="builtin",
                   help="folder of multicoil HDF5 files (fastMRI layout) or 'builtin' (built-in test split)")
    p.add_argument("--kind", default="2d", choices=list(DIMS_OF_KIND),
                   help="built-in data kind: 2D slices (2d, radial), 3D volumes (3d) or series (dynamic, "
                   "radial-dynamic); a volume or a series counts as one slice")
    p.add_argument("--slices", type=int, default=2, help="number of test slices, evenly spread (default 2)")
    p.add_argument("--data-accel", type=float, default=None,
                   help="mask the slices at this acceleration (default: the files' stored masks)")
    p.add_argument("--eps", default="0.01,0.02,0.05",
                   help="perturbation radii relative to ||b|| (default %(default)s)")
    p.add_argument("--attack-steps", type=int, default=6, help="gradient steps per attack (default 6)")
    p.add_argument("--attack-restarts", type=int, default=1, help="random starts per attack (default 1)")
    p.add_argument("--attack-step-size", type=float, default=1.0, help="first ascent step, in radii")
    p.add_argument("--attack-tol", type=float, default=None,
                   help="fixed-point tolerance inside the attack (default: the model's own)")
    p.add_argument("--random-draws", type=int, default=4, help="random perturbations per radius (default 4)")
    p.add_argument("--eval-tol", type=float, default=1e-6,
                   help="tolerance of the solves behind the reported numbers (default 1e-6)")
    p.add_argument("--eval-max-iter", type=int, default=300, help="iteration cap of those solves")
    p.add_argument("--conv-iters", type=int, default=100, help="iterations of the convergence study")
    p.add_argument("--conv-slices", type=int, default=1, help="slices used by the convergence study")
    p.add_argument("--uniqueness-slices", type=int, default=1, help="slices used by the uniqueness study")
    p.add_argument("--accels", default="2,6,8", help="distribution shift: other accelerations (default %(default)s)")
    p.add_argument("--noise-snr", default="20",
                   help="distribution shift: extra k-space noise levels, SNR in dB (default %(default)s)")
    p.add_argument("--parts", default=",".join(PARTS),
                   help="which measurements to run (default: all of %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(int(args.threads))
    if args.slices < 1:
        raise InputError(f"--slices must be >= 1, got {args.slices}")
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    cfg = RobustnessConfig(
        eps=_floats(args.eps, "--eps"), attack_steps=args.attack_steps, attack_restarts=args.attack_restarts,
        attack_step_size=args.attack_step_size, random_draws=args.random_draws, attack_tol=args.attack_tol,
        eval_tol=args.eval_tol, eval_max_iter=args.eval_max_iter, conv_iters=args.conv_iters,
        conv_slices=args.conv_slices, uniqueness_slices=args.uniqueness_slices,
        accelerations=_floats(args.accels, "--accels"), noise_snr_db=_floats(args.noise_snr, "--noise-snr"),
        parts=parts, seed=args.seed).validate()
    names = args.models if args.models is not None else default_models(args.kind)
    models = load_models([s for s in names.split(",")], device=args.device)
    data = None if str(args.data) == "builtin" else args.data
    examples = load_examples(data, args.slices, acceleration=args.data_accel, kind=args.kind)
    ph = examples[0].physics
    shift = {}
    cartesian = isinstance(ph, MultiCoilMRI)
    data_acc = (args.data_accel or achieved_acceleration(ph.mask, ph.spatial_shape)) if cartesian else None
    if "shift" in parts and not cartesian:
        print("note: non-Cartesian data have no mask to resample: the shift study measures the extra-noise levels "
              "only", file=sys.stderr)
    elif "shift" in parts:
        for acc in cfg.accelerations:
            if abs(acc - data_acc) / data_acc < 0.02:
                continue  # that is the data's own acceleration, measured anyway
            shift[acc] = load_examples(data, args.slices, acceleration=acc, kind=args.kind)
    if args.device != "cpu":
        for ex in [*examples, *(e for exs in shift.values() for e in exs)]:
            ex.y, ex.target, ex.physics = ex.y.to(args.device), ex.target.to(args.device), ex.physics.to(args.device)
    desc = f"built-in {args.kind} test split (SIMULATED k-space)" if data is None else str(data)
    print(f"robustness of {', '.join(models)} on {len(examples)} slice(s) of {desc}", flush=True)
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    res = run_robustness(models, examples, cfg, shift_examples=shift, progress=progress,
                         data_acceleration=None if data_acc is None else float(data_acc))
    res["data"] = desc
    paths = write_report(res, args.out)
    rows = summary_rows(res)
    if rows:
        print()
        print(markdown_table(rows, ["model", "eps", "worst-case amp.", "random amp. (mean / max)",
                                    "PSNR drop dB (max)", "certificate C", "verdict"]))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
