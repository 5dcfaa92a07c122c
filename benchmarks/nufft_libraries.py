"""Accuracy (vs an exact NUDFT) and CPU speed of the NUFFT libraries considered for NonCartesianMRI.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nufft_libraries.py --out benchmarks/nufft

Accuracy: single coil, 32×32, 32 golden-angle spokes × 64 readout points (2048 samples), relative error of the
forward and adjoint against the exact NUDFT matrix (float64). Speed: 128×128, 8 coils, 64 spokes × 256 (16384
samples per coil), median of 5 runs, one thread. Writes ``nufft.json`` and ``nufft.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import finufft
import numpy as np
import sigpy as sp
import torch

from molrecon.physics import NonCartesianMRI, radial_trajectory, simulate_coil_maps
from molrecon.physics.nufft_backend import torchkbnufft


def exact_matrix(traj: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``E[k, n] = exp(-2πi k·n / N) / sqrt(N)``, ``n`` centred: the operator every NUFFT approximates."""
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    phase = sum(np.outer(traj[:, d] / shape[d], grids[d].ravel()) for d in range(2))
    return np.exp(-2j * np.pi * phase) / math.sqrt(math.prod(shape))


def finufft_pair(traj: np.ndarray, shape: tuple[int, int], eps: float):
    om = [np.ascontiguousarray(2 * np.pi * traj[:, d] / shape[d], dtype=np.float64) for d in range(2)]
    s = 1 / math.sqrt(math.prod(shape))

    def fwd(x):
        return finufft.nufft2d2(om[0], om[1], x.astype(np.complex128), eps=eps) * s

    def adj(y):
        return finufft.nufft2d1(om[0], om[1], y.astype(np.complex128), shape, eps=eps, isign=1) * s

    return fwd, adj


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def median_time(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def accuracy() -> dict:
    shape = (32, 32)
    traj = radial_trajectory(32, 64, image_size=32).numpy().astype(np.float64)
    E = exact_matrix(traj, shape)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    y = rng.standard_normal(traj.shape[0]) + 1j * rng.standard_normal(traj.shape[0])
    ref_f, ref_a = E @ x.ravel(), (E.conj().T @ y).reshape(shape)
    out = {}
    op = NonCartesianMRI(torch.ones(1, 1, *shape, dtype=torch.complex64), torch.from_numpy(traj).float())
    xt = torch.from_numpy(x).to(torch.complex64)[None]
    out["torchkbnufft (numpoints 6, 2x grid)"] = {
        "forward": rel(op.A(xt)[0, 0].numpy(), ref_f),
        "adjoint": rel(op.A_adjoint(torch.from_numpy(y).to(torch.complex64)[None, None])[0].numpy(), ref_a),
        "toeplitz normal": rel(op.normal(xt)[0].numpy(), (E.conj().T @ ref_f).reshape(shape))}
    for eps in (1e-4, 1e-6):
        fwd, adj = finufft_pair(traj, shape, eps)
        out[f"finufft (eps {eps:g})"] = {"forward": rel(fwd(x), ref_f), "adjoint": rel(adj(y), ref_a)}
    c = traj.astype(np.float32)
    out["sigpy (default: oversamp 1.25, width 4)"] = {
        "forward": rel(sp.nufft(x.astype(np.complex64), c), ref_f),
        "adjoint": rel(sp.nufft_adjoint(y.astype(np.complex64), c, shape), ref_a)}
    return out


def speed() -> dict:
    shape, coils = (128, 128), 8
    traj = radial_trajectory(64, 256, image_size=128)
    op = NonCartesianMRI(simulate_coil_maps(shape, coils)[None], traj)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((1, *shape), generator=g, dtype=torch.complex64)
    y = op.A(x)
    op.normal(x)  # the Toeplitz kernel is computed once, outside the timing
    out = {"torchkbnufft A": median_time(lambda: op.A(x)),
           "torchkbnufft A^H": median_time(lambda: op.A_adjoint(y)),
           "torchkbnufft A^H A (composition)": median_time(lambda: op.A_adjoint(op.A(x))),
           "Toeplitz A^H A (FFT only)": median_time(lambda: op.normal(x))}
    t0 = time.perf_counter()
    _ = NonCartesianMRI(op.maps, traj).toeplitz_kernel
    out["Toeplitz kernel (once)"] = time.perf_counter() - t0
    fwd, adj = finufft_pair(traj.numpy().astype(np.float64), shape, 1e-6)
    coil = (op.maps * x[:, None])[0].numpy()
    yn = y[0].numpy()
    out["finufft A (eps 1e-6, 8 coils, + maps)"] = median_time(lambda: fwd(coil))
    out["finufft A^H (eps 1e-6, 8 coils)"] = median_time(lambda: adj(yn))
    return {k: round(v * 1e3, 2) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/nufft"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__, "torchkbnufft": torchkbnufft().__version__,
                          "finufft": finufft.__version__, "threads": torch.get_num_threads()},
              "accuracy_relative_error": accuracy(), "speed_ms": speed()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nufft.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| library | forward | adjoint |", "|---|---|---|"]
    accuracy_rows = result["accuracy_relative_error"].items()
    lines += [f"| {k} | {v['forward']:.2e} | {v['adjoint']:.2e} |" for k, v in accuracy_rows]
    lines += ["", "| operation (128², 8 coils, 16384 samples) | ms |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result["speed_ms"].items()]
    (args.out / "nufft.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
