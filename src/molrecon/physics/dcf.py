r"""Density compensation for non-Cartesian k-space: Pipe–Menon iteration (torchkbnufft's
``calc_density_compensation_function``), scaled to area units.

Pipe and Menon (MRM 1999) iterate :math:`w \leftarrow w / (G G^H w)`, ``G`` the gridding interpolation, whose
fixed point makes the gridded density flat. The iteration fixes ``w`` up to a global factor, so
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

import math
from collections.abc import Sequence

import torch

from ..errors import InputError
from .nufft_backend import quiet, torchkbnufft


def _blob(shape: Sequence[int], device: torch.device) -> torch.Tensor:
    axes = [torch.arange(n, device=device) - n // 2 for n in shape]
    grid = torch.meshgrid(*axes, indexing="ij")
    r2 = sum((g / (n / 8)) ** 2 for g, n in zip(grid, shape))
    return torch.exp(-r2 / 2).to(torch.complex64)[None, None]


def pipe_menon_dcf(trajectory: torch.Tensor, shape: Sequence[int], n_iter: int = 20, numpoints: int = 6,
                   oversampling: float = 2.0) -> torch.Tensor:
    """Density compensation ``[..., K]`` for ``trajectory`` ``[..., K, ndim]`` (pixels, edge ±N/2) on the image
    grid ``shape`` (its last ``ndim`` axes): torchkbnufft's Pipe–Menon iteration (``n_iter`` steps, its
    Kaiser–Bessel kernel of ``numpoints`` on an ``oversampling``× grid), in area units (module docstring).

    A trajectory with leading axes (one per frame) gets one compensation per frame.
    """
    tkbn = torchkbnufft()

    shape = tuple(int(s) for s in shape)
    if not isinstance(trajectory, torch.Tensor) or trajectory.is_complex() or trajectory.ndim < 2:
        raise InputError("trajectory must be a real tensor [..., K, ndim]")
    ndim = trajectory.shape[-1]
    if len(shape) < ndim:
        raise InputError(f"image shape {shape} has fewer axes than the trajectory's {ndim}")
    shape = shape[-ndim:]
    grid = [int(math.ceil(oversampling * n)) for n in shape]
    dev = trajectory.device
    n = torch.tensor(shape, dtype=torch.float32, device=dev)
    frames = trajectory.to(torch.float32).reshape(-1, *trajectory.shape[-2:])
    nufft = tkbn.KbNufft(im_size=shape, grid_size=grid, numpoints=numpoints).to(dev)
    adjoint = tkbn.KbNufftAdjoint(im_size=shape, grid_size=grid, numpoints=numpoints).to(dev)
    blob = _blob(shape, dev)
    out = []
    with torch.no_grad(), quiet():
        for traj in frames:
            omega = (traj * (2 * math.pi) / n).T.contiguous()
            w = tkbn.calc_density_compensation_function(omega, shape, num_iterations=n_iter, grid_size=grid,
                                                        numpoints=numpoints).reshape(-1).real
            # gridding operator A^H W A of the orthonormal single-coil NUFFT on the blob (scales cancel to 1/N)
            back = adjoint(w.to(torch.complex64) * nufft(blob, omega), omega) / math.prod(shape)
            scale = torch.vdot(back.flatten(), blob.flatten()).real / back.abs().pow(2).sum().clamp_min(1e-30)
            out.append(w * scale)
    return torch.stack(out).reshape(trajectory.shape[:-1])


__all__ = ["pipe_menon_dcf"]
