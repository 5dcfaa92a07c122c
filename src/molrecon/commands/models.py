"""``molrecon models``: list the shipped pretrained models with the figures they reached."""

from __future__ import annotations

import argparse
import json

from ..evaluate.report import markdown_table
from ..weights.pretrained import _root, list_pretrained


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the shipped pretrained models",
                       description="List the pretrained models shipped with molrecon (load them with "
                       "molrecon.load_pretrained(NAME) or --pretrained NAME), with their validation figures "
                       "and the command that trained them.")
    p.add_argument("--json", action="store_true", help="print the sidecars as JSON")
    p.add_argument("--verbose", "-v", action="store_true", help="also print each training command")
    p.set_defaults(func=run)


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def rows_for(models: list[dict]) -> list[dict]:
    """Table rows of :func:`molrecon.weights.pretrained.list_pretrained` entries."""
    rows = []
    for m in models:
        val = m.get("validation") or {}
        training = m.get("training") or {}
        rows.append({
            "name": m["name"],
            "method": m.get("method", "-"),
            "dims": m.get("dims", "-"),
            "sampling": m.get("trajectory") or f"{_fmt(m.get('acceleration'), 'g')}x",
            "params": _fmt((m.get("weights") or {}).get("num_parameters"), ","),
            "val PSNR (dB)": _fmt(val.get("psnr"), ".2f"),
            "val SSIM": _fmt(val.get("ssim"), ".4f"),
            "trained on": str(training.get("device", "-")),
            "command": str(training.get("command", "-")),
        })
    return rows


def run(args: argparse.Namespace) -> int:
    models = list_pretrained()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print(f"no pretrained model is shipped in this installation ({_root(None)})")
        return 0
    rows = rows_for(models)
    columns = ["name", "method", "dims", "sampling", "params", "val PSNR (dB)", "val SSIM", "trained on"]
    print(markdown_table(rows, columns + (["command"] if args.verbose else [])), end="")
    print("\nload with: molrecon.load_pretrained(NAME)  or  molrecon recon --method METHOD --pretrained NAME")
    return 0
