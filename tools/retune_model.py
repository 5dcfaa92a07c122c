"""Change the inference solver settings of a shipped model (maintainers' tool; the weights are untouched).

    python tools/retune_model.py mol-lr-2d-4x --cg-iter 10 --init-cg-iter 10 \
        --note "16 test slices: same PSNR to 0.001 dB, 1.62x instead of 2.16x MoDL K = 10 (benchmarks/README.md)"

The settings move the path to the fixed point, not the fixed point (``molrecon.weights.pretrained.SOLVER_SETTINGS``);
measure before changing them (``molrecon bench speed --cg-iters``, ``molrecon bench quality``). The sidecar keeps
each setting's trained value and the note.
"""

from __future__ import annotations

import argparse
import sys

from molrecon.errors import MolreconError
from molrecon.weights.pretrained import retune_pretrained


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="shipped model name")
    p.add_argument("--cg-iter", type=int, default=None, help="CG steps per block")
    p.add_argument("--cg-forcing", type=float, default=None,
                   help="stop each block's CG at this fraction of its warm start's residual")
    p.add_argument("--init-cg-iter", type=int, default=None, help="CG steps of the CG-SENSE start")
    p.add_argument("--max-iter", type=int, default=None)
    p.add_argument("--tol", type=float, default=None)
    p.add_argument("--note", required=True, help="what was measured to justify the change")
    a = p.parse_args()
    given = {"cg_iter": a.cg_iter, "cg_forcing": a.cg_forcing, "init_cg_iter": a.init_cg_iter,
             "max_iter": a.max_iter, "tol": a.tol}
    settings = {k: v for k, v in given.items() if v is not None}
    if not settings:
        print("error: nothing to change (give --cg-iter, --cg-forcing, --init-cg-iter, --max-iter or --tol)",
              file=sys.stderr)
        return 2
    try:
        path = retune_pretrained(a.name, settings, a.note)
    except MolreconError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: {settings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
