"""Where the top Jacobian direction of a MOL model's H lives, at its reconstruction of a built-in test slice.

    python tools/top_direction.py runs/mol_lr_2d/best.pt                 # test slice 0
    python tools/top_direction.py mol-lr-2d-4x --slice 7 --out top.json

Reconstructs the slice, runs the certificate's converged power iteration on J_H at the reconstruction and
reports: sigma_max there; the share of the top direction's energy inside the object (|x| > 5 % of its maximum)
and in its largest 1 % of pixels (localised or spread out); its energy in three bands of spatial frequency; and
sigma_max of J_H at x = 0 (the Jacobian of the empty background, what `lr_zero_jacobian_steps` penalises).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from _slices import builtin_slices, load_mol_or_none, where_h_acts

from molrecon.io import machine_info, write_json_atomic
from molrecon.models.lipschitz import jacobian_spectral_norm


def _frequency_shares(u: torch.Tensor, bands: tuple[float, float]) -> list[float]:
    """Shares of ``|FFT(u)|²`` at radii below, between and above ``bands`` (in k-space samples)."""
    spec = torch.fft.fftshift(torch.fft.fft2(u), dim=(-2, -1)).abs() ** 2
    spec = spec / spec.sum()
    h, w = spec.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    r = (yy ** 2 + xx ** 2).float().sqrt()
    lo, hi = bands
    masks = (r < lo, (r >= lo) & (r < hi), r >= hi)
    return [float(spec[..., m].sum()) for m in masks]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="shipped model name, learned method name or checkpoint path")
    p.add_argument("--slice", type=int, default=0, help="built-in 2D test slice (default 0)")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    a = p.parse_args()
    model = load_mol_or_none(a.model)
    if model is None:
        return 2
    # only the slices up to the one asked for are read and batched
    if a.slice < 0:
        print(f"error: --slice must be >= 0, got {a.slice}", file=sys.stderr)
        return 2
    slices = list(builtin_slices("2d", a.slice + 1))
    if slices[-1][0] != a.slice:
        print(f"error: --slice must be in [0, {len(slices)}), got {a.slice}", file=sys.stderr)
        return 2
    _, batch, physics = slices[-1]
    x = where_h_acts(model, batch, physics)

    def top(at: torch.Tensor) -> tuple[float, torch.Tensor]:
        sigma, u = jacobian_spectral_norm(model.prior, at, n_iter=300, tol=1e-4, return_vector=True,
                                          generator=torch.Generator().manual_seed(0))
        return float(sigma.max()), u[0]

    sigma, u = top(x)
    sigma_zero, _ = top(torch.zeros_like(x))
    energy = u.abs() ** 2
    energy = energy / energy.sum()
    k = max(1, energy.numel() // 100)
    row = {"model": a.model, "slice": a.slice, "file": str(batch["fname"][0]),
           "sigma_max": sigma, "sigma_max_at_zero": sigma_zero,
           "energy_in_object": float(energy[x[0].abs() > 0.05 * x.abs().max()].sum()),
           "energy_in_top_1pct_pixels": float(energy.flatten().topk(k).values.sum()),
           "frequency_shares_below_8_8to32_above_32": _frequency_shares(u, (8.0, 32.0))}
    for key, value in row.items():
        print(f"{key:40s} {value}")
    if a.out is not None:
        write_json_atomic(a.out, {**row, "command": " ".join(sys.argv), "machine": machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
