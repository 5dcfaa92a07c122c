r"""CG-SENSE on 2D radial data against BART's ``bart pics -l2 -t traj``: image agreement and time.

Both solve the same problem on the same k-space, trajectory and maps. molrecon's ``sense`` solves
:math:`(A^HA + \lambda\|A\|^2 I)x = A^Hy` with ``‖A‖`` its certified ``norm_bound`` (:mod:`molrecon.recon`), BART's
``pics -l2 -r r`` solves :math:`(A_b^HA_b + r I)x = A_b^Hy`. BART's NUFFT has the scale of ours (measured
``A_b = 1.0009 A`` on a random image, the rest is the NUFFTs' kernel error), so the matching weight is
``r = lam · norm_bound()²``; ``-S`` undoes pics' internal data scaling (which cancels for l2 anyway).

Time: the same number of CG iterations on both sides (molrecon with ``tol=0``, so it does not stop early; BART's
``-i``), molrecon from the operator's construction (NUFFT plans and Toeplitz kernel) to the image, in-process;
BART the wall time of the ``bart pics`` process (reading the files included) and the ``Total Time`` it reports.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..formats import read_cfl, write_cfl
from ..formats.noncartesian import to_bart_noncartesian
from ..physics import NonCartesianMRI
from ..recon import cg_sense


def bart_available() -> bool:
    return shutil.which("bart") is not None


def _bart(args: list[str], cwd: Path) -> str:
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PATH": os.environ.get("PATH", "/usr/bin")}
    res = subprocess.run(["bart", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise InputError(f"bart {' '.join(args)} failed: {(res.stderr or res.stdout).strip().splitlines()[-1:]}")
    return res.stdout


def bart_pics_l2(kspace: np.ndarray, trajectory: np.ndarray, maps: np.ndarray, r: float, iters: int,
                 readout: int | None = None,
                 workdir: str | os.PathLike | None = None) -> tuple[np.ndarray, float, float]:
    """``bart pics -l2 -r r -i iters -S -t traj`` on one slice (k-space ``[C, K]``, trajectory ``[K, 2]``, maps
    ``[C, H, W]``); returns ``(image [H, W], wall seconds, BART's reported Total Time or nan)``."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        d = Path(tmp)
        ksp, traj = to_bart_noncartesian(kspace, trajectory, readout)
        write_cfl(d / "ksp", ksp)
        write_cfl(d / "traj", traj)
        write_cfl(d / "maps", np.asarray(maps).transpose(1, 2, 0)[:, :, None, :])
        t0 = time.perf_counter()
        out = _bart(["pics", "-l2", "-r", repr(float(r)), "-i", str(iters), "-S", "-t", "traj", "ksp", "maps", "x"], d)
        wall = time.perf_counter() - t0
        reported = re.search(r"Total Time:\s*([0-9.eE+-]+)", out)
        image = np.asarray(read_cfl(d / "x")).reshape(maps.shape[1:])
    return image, wall, float(reported.group(1)) if reported else float("nan")


def molrecon_sense(kspace: np.ndarray, trajectory: np.ndarray, maps: np.ndarray, lam: float, iters: int,
                   tol: float = 0.0) -> tuple[np.ndarray, float, float]:
    """molrecon's CG-SENSE on one slice from scratch; returns ``(image, seconds, norm_bound()²)``."""
    t0 = time.perf_counter()
    physics = NonCartesianMRI(torch.from_numpy(np.asarray(maps, np.complex64))[None],
                              torch.from_numpy(np.asarray(trajectory, np.float32)))
    x = cg_sense(torch.from_numpy(np.asarray(kspace, np.complex64))[None], physics, lam=lam, max_iter=iters, tol=tol)
    seconds = time.perf_counter() - t0
    return x[0].numpy(), seconds, physics.norm_bound() ** 2


def relative_error(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def compare(kspace: np.ndarray, trajectory: np.ndarray, maps: np.ndarray, lam: float, iters: int = 100,
            readout: int | None = None, repeats: int = 3) -> dict[str, Any]:
    """Agreement (converged: ``iters`` iterations, molrecon to ``tol=1e-8``) and time (median of ``repeats``,
    ``iters`` iterations each) of molrecon's ``sense`` and ``bart pics -l2`` at the matched weight, plus the
    error of BART at the unmatched weight ``r = lam`` (what a wrong λ convention gives)."""
    x, _, bound2 = molrecon_sense(kspace, trajectory, maps, lam, iters, tol=1e-8)
    r = lam * bound2
    xb, _, _ = bart_pics_l2(kspace, trajectory, maps, r, iters, readout)
    wrong, _, _ = bart_pics_l2(kspace, trajectory, maps, lam, iters, readout)
    ours = [molrecon_sense(kspace, trajectory, maps, lam, iters)[1] for _ in range(repeats)]
    theirs = [bart_pics_l2(kspace, trajectory, maps, r, iters, readout)[1:] for _ in range(repeats)]
    t_ours = statistics.median(ours)
    t_bart = statistics.median(t for t, _ in theirs)
    return {"lam": lam, "bart_r": r, "norm_bound_sq": bound2, "iterations": iters,
            "rel_error": relative_error(x, xb), "rel_error_wrong_lam": relative_error(x, wrong),
            "molrecon_s": t_ours, "bart_wall_s": t_bart,
            "bart_reported_s": statistics.median(rep for _, rep in theirs), "time_ratio": t_ours / t_bart,
            "shape": list(maps.shape), "samples": int(np.asarray(kspace).shape[-1]),
            "torch_threads": torch.get_num_threads()}


__all__ = ["bart_available", "bart_pics_l2", "molrecon_sense", "compare", "relative_error"]
