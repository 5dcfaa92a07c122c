r"""Density compensation for non-Cartesian k-space: Pipe–Menon iteration (sigpy's ``pipe_menon_dcf``), scaled
to area units.

Pipe and Menon (MRM 1999) iterate :math:`w \leftarrow w / (G G^H w)`, ``G`` the gridding interpolation, whose
fixed point makes the gridded density flat. sigpy returns ``w`` up to an arbitrary global factor, so
:func:`pipe_menon_dcf` rescales it so that the gridding operator :math:`A^H W A` (single coil, centred orthonormal
NUFFT) reproduces a smooth image: :math:`c = \langle g, A^H W A g\rangle / \|A^H W A g\|^2` for a Gaussian blob
``g`` of width ``N/8`` (its spectrum lies inside the sampled centre of any useful trajectory). Then ``w`` is the
k-space area per sample in pixel units: on a full Cartesian grid ``w ≈ 1``, and :math:`A^H(w\,y)` has the scale
of the image.

Example
-------
>>> from molrecon.physics.trajectories import radial_trajectory
>>> w = pipe_menon_dcf(radial_trajectory(32, 64), (64, 64))
>>> w.shape, bool((w > 0).all())
(torch.Size([2048]), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError


def _blob(shape: Sequence[int]) -> np.ndarray:
    axes = [np.arange(n) - n // 2 for n in shape]
    grid = np.meshgrid(*axes, indexing="ij")
    r2 = sum((g / (n / 8)) ** 2 for g, n in zip(grid, shape))
    return np.exp(-r2 / 2).astype(np.complex64)


def _area_scale(w: np.ndarray, coord: np.ndarray, shape: tuple[int, ...]) -> float:
    import sigpy as sp

    g = _blob(shape)
    grid = sp.nufft_adjoint(w * sp.nufft(g, coord, oversamp=2.0, width=6), coord, shape, oversamp=2.0, width=6)
    return float(np.vdot(grid, g).real / max(np.vdot(grid, grid).real, 1e-30))


def pipe_menon_dcf(trajectory: torch.Tensor, shape: Sequence[int], n_iter: int = 30) -> torch.Tensor:
    """Density compensation ``[..., K]`` for ``trajectory`` ``[..., K, ndim]`` on the image grid ``shape`` (the
    last ``ndim`` axes): sigpy's Pipe–Menon iteration (``n_iter`` steps), in area units (module docstring).

    A trajectory with leading axes (one per frame) gets one compensation per frame.
    """
    import sigpy.mri

    shape = tuple(int(s) for s in shape)
    if not isinstance(trajectory, torch.Tensor) or trajectory.is_complex() or trajectory.ndim < 2:
        raise InputError("trajectory must be a real tensor [..., K, ndim]")
    ndim = trajectory.shape[-1]
    if len(shape) < ndim:
        raise InputError(f"image shape {shape} has fewer axes than the trajectory's {ndim}")
    shape = shape[-ndim:]
    coords = trajectory.detach().cpu().numpy().astype(np.float32)
    flat = coords.reshape(-1, *coords.shape[-2:])
    out = []
    for c in flat:
        w = np.asarray(sigpy.mri.pipe_menon_dcf(c, shape, max_iter=n_iter, show_pbar=False), dtype=np.float32)
        w = w * _area_scale(w, c, shape)
        out.append(w)
    return torch.from_numpy(np.stack(out).reshape(coords.shape[:-1])).to(trajectory.device)


__all__ = ["pipe_menon_dcf"]
