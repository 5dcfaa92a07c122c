"""Write a small SIMULATED 2D radial multicoil file in the non-Cartesian HDF5 layout (``docs/formats.md``), so
that ``molrecon recon --input radial.h5 ...`` can be tried on a fresh machine without the built-in radial set.

    .venv/bin/python tools/make_radial_example.py radial.h5 [--size 128 --coils 8 --spokes 32 --no-maps]

The object is sigpy's Shepp–Logan phantom with a smooth phase; the k-space is its NUFFT on golden-angle spokes
(``2 × size`` samples each) with sigpy's birdcage maps, computed with a wider Kaiser–Bessel kernel on a 2.5×
grid than reconstruction uses (a milder inverse crime), plus complex Gaussian noise at ``--snr-db``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from molrecon.formats.noncartesian import problem_from_arrays, write_noncartesian
from molrecon.physics import NonCartesianMRI, complex_gaussian, radial_trajectory, simulate_coil_maps


def simulate(size: int, coils: int, spokes: int, snr_db: float, seed: int) -> dict[str, np.ndarray]:
    """``kspace [1, C, K]``, ``trajectory [K, 2]``, ``maps [1, C, size, size]`` and ``target [1, size, size]``."""
    import sigpy as sp

    mag = torch.from_numpy(np.abs(sp.shepp_logan((size, size))).astype(np.float32))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    target = (mag * torch.exp(1j * (0.6 * xx + 0.4 * yy ** 2))).to(torch.complex64)[None]
    traj = radial_trajectory(spokes, 2 * size, golden=True, image_size=size)
    maps = simulate_coil_maps((size, size), coils)[None]
    clean = NonCartesianMRI(maps, traj, oversampling=2.5, numpoints=8).A(target)
    sigma = float(clean.abs().pow(2).mean().sqrt()) / 10 ** (snr_db / 20)
    noise = complex_gaussian(tuple(clean.shape), sigma, torch.Generator().manual_seed(seed))
    return {"kspace": (clean + noise).numpy(), "trajectory": traj.numpy(), "maps": maps.numpy(),
            "target": target.numpy()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output .h5 (written atomically)")
    ap.add_argument("--size", type=int, default=128, help="image matrix (size x size)")
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--spokes", type=int, default=32)
    ap.add_argument("--snr-db", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-maps", action="store_true", help="leave the maps out (the reader then runs ESPIRiT)")
    args = ap.parse_args(argv)
    sim = simulate(args.size, args.coils, args.spokes, args.snr_db, args.seed)
    problem = problem_from_arrays(sim["kspace"], sim["trajectory"], (args.size, args.size), "2d",
                                  source="tools/make_radial_example.py",
                                  maps=None if args.no_maps else sim["maps"],
                                  attrs={"acquisition": "SIMULATED", "simulated": True, "snr_db": args.snr_db,
                                         "seed": args.seed, "spokes": args.spokes, "object": "shepp-logan"})
    write_noncartesian(args.out, problem)
    print(f"wrote {args.out} (SIMULATED radial: {args.spokes} spokes x {2 * args.size}, {args.coils} coils, "
          f"{args.size}x{args.size}{', no maps' if args.no_maps else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
