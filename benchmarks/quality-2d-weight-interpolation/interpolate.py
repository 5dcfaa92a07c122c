"""Interpolate two training checkpoints of one model, ``w = (1 − t)·w_a + t·w_b`` (floating-point parameters).

The result keeps ``b``'s config and drops the optimiser state and the fixed-point cache, so that it is evaluated,
not resumed:

    python interpolate.py A.pt B.pt T OUT.pt
"""

from __future__ import annotations

import sys

import torch


def main() -> None:
    path_a, path_b, t, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    a = torch.load(path_a, weights_only=False, map_location="cpu")
    b = torch.load(path_b, weights_only=False, map_location="cpu")
    wa, wb = a["model_state"], b["model_state"]
    b["model_state"] = {k: (1 - t) * wa[k] + t * wb[k] if wa[k].is_floating_point() else wa[k] for k in wa}
    for key in ("optimizer", "fixed_point_cache"):
        b.pop(key, None)
    torch.save(b, out)


if __name__ == "__main__":
    main()
