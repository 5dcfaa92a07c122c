"""Power-iteration norm of each 3×3 convolution of ``modl-2d-4x`` on grids of 24 to 128 points, against the
certified bound on 128² (why the training-mode power iteration may run on a 48-point grid).

    OMP_NUM_THREADS=1 python benchmarks/memory-2d-allocated-lean/power_grid.py
"""

from __future__ import annotations

import torch

from molrecon.models.cnn import conv_operator_norm_bound, conv_power_iteration
from molrecon.weights.loading import resolve_model

GRIDS = (24, 32, 48, 64, 128)


def main() -> None:
    torch.manual_seed(0)
    model = resolve_model("modl-2d-4x").model
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    print("layer  " + "  ".join(f"sigma@{n}" for n in GRIDS) + "  bound@128  ratios")
    for i, conv in enumerate(convs):
        w = conv.weight.detach()
        sigmas = []
        for n in GRIDS:
            u = torch.randn(1, w.shape[1], n, n)
            sigma, _ = conv_power_iteration(w, u / u.norm(), 300)
            sigmas.append(float(sigma))
        bound = float(conv_operator_norm_bound(w, (128, 128)))
        print(i, " ".join(f"{s:.4f}" for s in sigmas), f"{bound:.4f}", " ".join(f"{s / bound:.4f}" for s in sigmas))


if __name__ == "__main__":
    main()
