"""Measure the reference of the k-space normalisation on the built-in training split, per data kind.

The reference is the median over the training items of the statistic (default ``p99-zero-filled``) at the
scale the shipped models were trained at (the built-in loaders' max|target| = 1), with the masks of the
training configs. Its output is what ``molrecon.normalization.DEFAULT_REFERENCE`` and the shipped
sidecars' ``"normalization"`` fields hold.

    OMP_NUM_THREADS=1 .venv/bin/python tools/measure_normalization.py configs/mol_lr_2d.yaml \
        configs/mol_lr_3d.yaml configs/mol_lr_dynamic.yaml
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from molrecon.data import collate, physics_from_batch
from molrecon.normalization import DEFAULT_STATISTIC, STATISTICS
from molrecon.train import load_config
from molrecon.train.datasets import build_datasets


def measure(config_path: str, statistic: str = DEFAULT_STATISTIC) -> dict:
    cfg = load_config(config_path)
    train, _ = build_datasets(cfg["data"], seed=cfg["train"]["seed"])
    values = []
    with torch.no_grad():
        for i in range(len(train)):
            batch = collate([train[i]])
            values.append(float(STATISTICS[statistic](batch["kspace"], physics_from_batch(batch))[0]))
    return {"config": config_path, "kind": cfg["data"]["kind"], "statistic": statistic, "items": len(values),
            "reference": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+")
    p.add_argument("--statistic", default=DEFAULT_STATISTIC, choices=sorted(STATISTICS))
    args = p.parse_args()
    for c in args.configs:
        print(json.dumps(measure(c, args.statistic)), flush=True)


if __name__ == "__main__":
    main()
