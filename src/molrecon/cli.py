"""The ``molrecon`` command line. Each sub-command lives in ``molrecon.commands.<name>``."""

from __future__ import annotations

import argparse
import importlib
import sys

from ._version import __version__
from .errors import MolreconError
from .precision import use_ieee_float32

COMMAND_MODULES = ["recon", "convert", "info", "evaluate", "demo", "models", "train", "data", "robustness", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="molrecon", description="Memory-efficient, provably stable MRI "
                                     "reconstruction with Monotone Operator Learning (MOL).")
    parser.add_argument("--version", action="version", version=f"molrecon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"molrecon.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    use_ieee_float32()  # every method in IEEE float32 on GPUs too (molrecon/precision.py)
    try:
        return int(args.func(args) or 0)
    except MolreconError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
