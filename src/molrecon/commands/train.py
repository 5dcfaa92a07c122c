"""``molrecon train CONFIG [--set key.sub=value ...] [--resume]``: train a learned model from a YAML config.

Data-parallel on several processes/machines: ``torchrun --nproc_per_node=N -m molrecon train CONFIG``
(see ``docs/distributed.md``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..train import Trainer, load_config
from ..weights.checkpoint import load_checkpoint
from .checks import check_output_dir


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train MOL-SN / MOL-LR / DEQ / MoDL from a YAML config",
        description="Train a learned reconstruction from a YAML config (see configs/). Checkpoints (last.pt, "
                    "best.pt), CSV and TensorBoard logs go to out_dir.",
        epilog="example: molrecon train configs/tiny_2d.yaml --set out_dir=runs/tiny --set train.max_steps=20")
    p.add_argument("config", help="YAML config file (read with yaml.safe_load)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. train.lr=1e-4 or out_dir=runs/x (value parsed as YAML); "
                        "repeatable")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly from out_dir/last.pt (starts afresh if there is none)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh even if out_dir already holds a checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.no_progress:
        overrides.append("train.progress=false")
    config = load_config(args.config, overrides)
    out_dir = Path(config["out_dir"])
    check_output_dir(out_dir, "out_dir")
    last = out_dir / "last.pt"
    if args.resume and last.is_file() and os.environ.get("RANK", "0") == "0":
        state = load_checkpoint(last)
        print(f"resuming from step {state.get('step')} (epoch {state.get('epoch')}) of {last}", flush=True)
    # under torchrun (WORLD_SIZE > 1) the trainer joins the process group and trains data-parallel
    trainer = Trainer(config, resume=args.resume, overwrite=args.overwrite)
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    if trainer.is_main:
        print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}, indent=1))
    return 0
