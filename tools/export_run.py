"""Export a finished training run as a shipped pretrained model (maintainers' tool).

    python tools/export_run.py runs/mol_lr_2d mol-lr-2d-4x configs/mol_lr_2d.yaml [--note "..."] [--cg-iter 15]

Takes ``best.pt`` (the checkpoint with the best validation PSNR; another with ``--checkpoint``), records the exact
command, the machine, the wall time (sum of logged step times, validation included as logged) and the validation
figures of that checkpoint: the ``val_log.csv`` row of its step (with ``train.best_requires_monotone``, also the
largest ``Lip(H)`` at the validation items).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from molrecon.data.builtin import default_root, load_manifest, normalize_kind
from molrecon.io import machine_info
from molrecon.metrics import PSNR_WHOLE_IMAGE
from molrecon.train import load_config
from molrecon.weights.checkpoint import load_checkpoint
from molrecon.weights.pretrained import export_pretrained


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run", type=Path)
    p.add_argument("name")
    p.add_argument("config")
    p.add_argument("--note", default="")
    p.add_argument("--device-note", default="OMP_NUM_THREADS=1 per run, other runs on the same cores",
                   help="how the run was placed on the machine (recorded beside the CPU count)")
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--cg-iter", type=int, default=None,
                   help="ship with this many CG steps per block instead of the trained value (same fixed point, "
                        "fewer outer iterations: measure it first with `molrecon bench speed --cg-iters`)")
    a = p.parse_args()
    with open(a.run / "train_log.csv") as f:
        steps = list(csv.DictReader(f))
    with open(a.run / "val_log.csv") as f:
        vals = list(csv.DictReader(f))
    step = int(load_checkpoint(a.run / a.checkpoint).get("step", 0))
    # the validation of the exported weights: best.pt's is the best row, another checkpoint's the row of its step
    at_step = [r for r in vals if int(r["step"]) == step]
    best = at_step[-1] if at_step else max(vals, key=lambda r: float(r["val_psnr"])) if vals else {}
    config = load_config(a.run / "config.yaml")
    kind = normalize_kind(config["data"]["kind"])
    # validation is logged per item (slice, volume or series): the built-in manifest says how many there were
    num_val = load_manifest(default_root() / kind)["num_slices"]["val"]
    train_s = sum(float(r["step_time"]) for r in steps if r.get("step_time"))
    val_s = sum(float(r["val_time_per_slice"]) * num_val for r in vals if r.get("val_time_per_slice"))
    machine = machine_info()
    meta = {
        "training": {
            "command": f"molrecon train {a.config}",
            "device": f"CPU, {machine['cpu_count']} shared cores, {a.device_note}",
            "steps_run": int(steps[-1]["step"]) if steps else 0,
            "wall_time_s": round(train_s + val_s, 1),
            "note": a.note,
        },
        "validation": {"psnr": float(best.get("val_psnr", "nan")), "ssim": float(best.get("val_ssim", "nan")),
                       "nmse": float(best.get("val_nmse", "nan")), "step": int(best.get("step", 0)),
                       "split": f"built-in {kind} val ({num_val} items), whole image",
                       "psnr_definition": PSNR_WHOLE_IMAGE},
    }
    if best.get("val_lipschitz"):  # a run with train.best_requires_monotone: the largest Lip(H) at the val items
        meta["validation"]["lipschitz_max"] = float(best["val_lipschitz"])
    overrides = {"cg_iter": a.cg_iter} if a.cg_iter is not None else None
    out = export_pretrained(a.run / a.checkpoint, a.name, meta, solver_overrides=overrides)
    print(f"exported {a.run / a.checkpoint} -> {out}  (val PSNR {meta['validation']['psnr']:.2f} dB)")


if __name__ == "__main__":
    main()
