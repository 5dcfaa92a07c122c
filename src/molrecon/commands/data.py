"""``molrecon data``: build and check the built-in offline dataset (SIMULATED k-space from real anatomy)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..data import DEFAULTS, build_builtin, default_root, load_manifest, verify_builtin
from ..errors import InputError
from ..names import DIMS_OF_KIND, NONCARTESIAN_KINDS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build or verify the built-in offline dataset (simulated from MNI152 anatomy)")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    b = dsub.add_parser("build", help="build the built-in set into OUT/<kind> (offline, deterministic)")
    b.add_argument("--out", type=Path, default=None,
                   help="dataset root (default: $MOLRECON_DATA or ~/.cache/molrecon/builtin)")
    b.add_argument("--kind", default="2d", choices=[*DIMS_OF_KIND, "all"])
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", type=int, default=None, help="image side in pixels (default: 128 2d, 64 3d, 96 dynamic)")
    b.add_argument("--coils", type=int, default=None, help="number of coils (default 8)")
    b.add_argument("--snr-db", type=float, default=None, help="k-space SNR in dB (default 30)")
    b.add_argument("--contrasts", default=None, help="comma-separated subset of t1,t2,pd,flair")
    b.add_argument("--frames", type=int, default=None, help="frames of the dynamic sets (default 12)")
    b.add_argument("--spokes", type=int, default=None,
                   help="radial sets: golden-angle spokes stored (radial, default 64) or per frame (radial-dynamic, "
                        "default 16)")
    b.add_argument("--force", action="store_true", help="rebuild even if the folder exists")
    b.set_defaults(func=run)
    v = dsub.add_parser("verify", help="check the files of a built set against its manifest checksums")
    v.add_argument("--out", type=Path, default=None, help="dataset root (default as for build)")
    v.add_argument("--kind", default="2d", choices=[*DIMS_OF_KIND, "all"])
    v.set_defaults(func=run)
    p.set_defaults(func=run, data_command=None)


def run(args: argparse.Namespace) -> int:
    if args.data_command is None:
        raise InputError("molrecon data needs an action: build or verify (see molrecon data --help)")
    root = args.out if args.out is not None else default_root()
    kinds = list(DIMS_OF_KIND) if args.kind == "all" else [args.kind]
    if args.data_command == "verify":
        bad = 0
        for kind in kinds:
            problems = verify_builtin(root / kind)
            for line in problems:
                print(line)
            print(f"{root / kind}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
            bad += len(problems)
        if bad:
            raise InputError(f"{bad} file(s) of the built-in set in {root} are missing or changed")
        return 0
    params = {}
    for key in ("size", "coils", "snr_db", "frames"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if args.contrasts:
        params["contrasts"] = [c.strip() for c in args.contrasts.split(",") if c.strip()]
    for kind in kinds:
        folder = root / kind
        if (folder / "manifest.json").exists() and not args.force:
            print(f"{folder}: already built (use --force to rebuild)")
            continue
        kparams = {k: v for k, v in params.items() if k in DEFAULTS[kind]}
        if args.spokes is not None and kind in NONCARTESIAN_KINDS:
            kparams["spokes" if "spokes" in DEFAULTS[kind] else "spokes_per_frame"] = args.spokes
        t0 = time.perf_counter()
        build_builtin(folder, kind, seed=args.seed, overwrite=True, **kparams)
        m = load_manifest(folder)
        n = m["num_slices"]
        print(f"{folder}: built {kind} set (SIMULATED from MNI152 anatomy) in {time.perf_counter() - t0:.1f} s: "
              f"train {n['train']}, val {n['val']}, test {n['test']} items")
    return 0
