"""``molrecon models``: list the shipped pretrained models with the figures they reached."""

from __future__ import annotations

import argparse
import json
import math

from ..evaluate.report import markdown_table
from ..weights.pretrained import _root, list_pretrained


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the shipped pretrained models",
                       description="List the pretrained models shipped with molrecon (load them with "
                       "molrecon.load_pretrained(NAME) or --pretrained NAME), with their validation figures, "
                       "the Lipschitz constant of MOL's H at the test reconstructions (a proof for MOL-SN, an "
                       "estimate for MOL-LR: not monotone where it is >= 1) and the command that trained them.")
    p.add_argument("--json", action="store_true", help="print the sidecars as JSON")
    p.add_argument("--verbose", "-v", action="store_true", help="also print each training command")
    p.set_defaults(func=run)


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def lipschitz_cell(meta: dict) -> str:
    """``Lip(H)`` of a MOL model at its test reconstructions, as recorded in its sidecar: a proof (MOL-SN) or an
    estimate, and at how many items it is not below 1."""
    if meta.get("method") not in ("mol-sn", "mol-lr"):
        return "-"
    rec = meta.get("lipschitz_at_test")
    if not isinstance(rec, dict):
        return "not measured"
    if rec.get("certified"):  # rounded up: a bound printed below its value would no longer be one
        return f"<= {math.ceil(rec['max_L'] * 1e4) / 1e4:.4f} (proof)"
    above = f", >= 1 at {rec['not_monotone']} of {rec['items']}" if rec.get("not_monotone") else ""
    return f"{rec['max_L']:.4f} (estimate{above})"


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
            "Lip(H) at test": lipschitz_cell(m),
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
    columns = ["name", "method", "dims", "sampling", "params", "val PSNR (dB)", "val SSIM", "Lip(H) at test",
               "trained on"]
    print(markdown_table(rows, columns + (["command"] if args.verbose else [])), end="")
    print("\nload with: molrecon.load_pretrained(NAME)  or  molrecon recon --method METHOD --pretrained NAME")
    return 0
