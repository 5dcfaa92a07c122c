"""CG-SENSE vs ``bart pics -l2 -t`` on a built-in 2D radial slice: image agreement and time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bart_radial.py --out benchmarks/bart-radial

The first validation slice of the built-in ``radial`` kind (128², 8 coils, the default 32 golden-angle spokes ×
256, true maps), molrecon's ``sense`` and BART's ``pics -l2`` at the matched weight (``molrecon.bench.bart_radial``
says how it is matched and what is timed). Writes ``bart_radial.json`` and ``bart_radial.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from pathlib import Path

import torch

from molrecon.bench.bart_radial import bart_available, compare
from molrecon.data.builtin import builtin_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--lams", type=float, nargs="+", default=[1e-3, 1e-2])
    ap.add_argument("--iters", type=int, nargs="+", default=[30, 100])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not bart_available():
        raise SystemExit("error: needs BART's `bart` command (apt-get install bart)")
    ds = builtin_dataset("radial", "val")
    item = ds[0]
    readout = ds.meta[ds.examples[0][0]]["readout"]
    rows = []
    for lam in args.lams:
        for iters in args.iters:
            row = compare(item["kspace"].numpy(), item["trajectory"].numpy(), item["maps"].numpy(), lam, iters,
                          readout=readout, repeats=args.repeats)
            row["slice"] = f"val/{item['fname']}[{item['slice']}]"
            rows.append(row)
            print(json.dumps(row), flush=True)
    version = subprocess.run(["bart", "version"], capture_output=True, text=True).stdout.strip()
    meta = {"machine": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "bart": version}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bart_radial.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# CG-SENSE vs bart pics -l2 (2D radial, {rows[0]['shape']}, {rows[0]['samples']} samples per coil)",
             "", f"{meta['machine']}, torch {meta['torch']} ({meta['torch_threads']} thread), BART {version}.", "",
             "| lam | bart -r | iterations | rel. error vs bart | same with r = lam (wrong) | molrecon s | bart s "
             "(wall) | bart s (reported) | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['lam']:g} | {r['bart_r']:.4g} | {r['iterations']} | {r['rel_error']:.2e} | "
                     f"{r['rel_error_wrong_lam']:.2e} | {r['molrecon_s']:.2f} | {r['bart_wall_s']:.2f} | "
                     f"{r['bart_reported_s']:.2f} | {r['time_ratio']:.2f} |")
    (args.out / "bart_radial.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
