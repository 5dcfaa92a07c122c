"""How much of its bound a MOL model's ``H`` uses: the Jacobian's spectral norm (150 power-iteration steps) at the
image where ``H`` acts in the reconstruction of the first built-in test slices, and at ``x = 0``.

    OMP_NUM_THREADS=1 python benchmarks/quality-2d-orthogonal-lr/local_jacobian_norm.py mol-sn-2d-4x [SLICES]
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from _slices import builtin_slices, load_mol_or_none, where_h_acts  # noqa: E402

from molrecon.models.lipschitz import jacobian_spectral_norm  # noqa: E402


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = load_mol_or_none(sys.argv[1])
    if model is None:
        raise SystemExit(2)
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    for index, batch, physics in builtin_slices("2d", count):
        x = where_h_acts(model, batch, physics)
        at_x = jacobian_spectral_norm(model.prior, x, n_iter=150, generator=torch.Generator().manual_seed(0))
        at_0 = jacobian_spectral_norm(model.prior, torch.zeros_like(x), n_iter=150,
                                      generator=torch.Generator().manual_seed(0))
        print(f"slice {index}: {float(at_x.max()):.4f} at the reconstruction, {float(at_0.max()):.4f} at x = 0")


if __name__ == "__main__":
    main()
