"""Coil maps for non-Cartesian data: ESPIRiT (:func:`molrecon.physics.coils.estimate_coil_maps`) on the gridded
centre of k-space.

The samples with ``|k_d| < c_d/2`` (``c = calib`` per encoded axis, at most the matrix) are gridded per coil onto a
``c``-point image with their density compensation (:meth:`NonCartesianMRI.gridding` on that small grid, unit
maps), transformed to a Cartesian ``c``-point k-space centre by the centred orthonormal FFT, zero-padded to the
full matrix and handed to the Cartesian ESPIRiT path. 2D+time pools the samples of all frames (static maps,
repeated over frames, as the Cartesian path does).

Example
-------
>>> import torch
>>> from molrecon.physics import NonCartesianMRI, simulate_coil_maps
>>> from molrecon.physics.trajectories import radial_trajectory
>>> truth = NonCartesianMRI(simulate_coil_maps((32, 32), 4)[None], radial_trajectory(32, 64, image_size=32))
>>> y = truth.A(torch.ones(1, 32, 32, dtype=torch.complex64))
>>> estimate_maps_noncartesian(y, truth.trajectory, (32, 32), calib=16).shape
torch.Size([1, 4, 32, 32])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError
from .coils import estimate_coil_maps
from .fft import fft_centered
from .mri import infer_dims
from .noncartesian import NonCartesianMRI


def estimate_maps_noncartesian(kspace: torch.Tensor, trajectory: torch.Tensor, shape: tuple[int, ...],
                               dims: str | None = None, dcf: torch.Tensor | None = None, calib: int = 24,
                               **espirit) -> torch.Tensor:
    """ESPIRiT maps ``[B, C, *shape]`` from non-Cartesian ``kspace`` ``[B, C, K]`` (``[B, C, T, K]``) on
    ``trajectory`` (module docstring); ``espirit`` goes to :func:`~molrecon.physics.coils.estimate_coil_maps`."""
    shape = tuple(int(s) for s in shape)
    dims = infer_dims(len(shape), dims)
    if not isinstance(kspace, torch.Tensor) or not kspace.is_complex():
        raise InputError("non-Cartesian k-space must be a complex tensor [B, C, K] (or [B, C, T, K])")
    if not isinstance(trajectory, torch.Tensor):
        raise InputError("trajectory must be a torch tensor")
    nufft_shape = shape[-2:] if dims == "2d+t" else shape
    ndim = len(nufft_shape)
    traj = trajectory.to(torch.float32).reshape(-1, ndim)
    if kspace.shape[2:].numel() != traj.shape[0]:
        raise InputError(f"k-space of shape {tuple(kspace.shape)} does not match a trajectory of "
                         f"{traj.shape[0]} samples")
    y = kspace.reshape(*kspace.shape[:2], -1)
    w = None if dcf is None else dcf.to(torch.float32).reshape(-1)
    cal = tuple(min(calib, n) for n in nufft_shape)
    half = torch.tensor(cal, dtype=torch.float32, device=traj.device) / 2
    keep = (traj.abs() < half).all(dim=-1)
    if int(keep.sum()) < 2 * ndim:
        raise InputError(f"no k-space centre to calibrate on: {int(keep.sum())} samples within ±{calib / 2:g}")
    b, c = y.shape[:2]
    unit = torch.ones((1, 1, *cal), dtype=torch.complex64, device=y.device)
    grid = NonCartesianMRI(unit, traj[keep], dcf=None if w is None else w[keep], dims="2d" if ndim == 2 else "3d")
    # one coil at a time through the unit-map operator: the coils become the batch
    coil_images = grid.gridding(y[..., keep].reshape(b * c, 1, -1))
    centre = fft_centered(coil_images.reshape(b, c, *cal), tuple(range(-ndim, 0)))
    pad = []
    for n, m in zip(reversed(nufft_shape), reversed(cal)):
        lo = n // 2 - m // 2
        pad += [lo, n - m - lo]
    full = F.pad(centre, pad)
    # ESPIRiT needs calibration rows: a 6-wide kernel in a calibration region of 8 (few partitions of a stack of
    # stars) leaves too few and returns zero maps, so the kernel shrinks with the region unless given
    espirit.setdefault("kernel_width", min(6, max(2, min(cal) // 2)))
    maps = estimate_coil_maps(full, calib_width=min(cal), dims="2d" if ndim == 2 else "3d", **espirit)
    if not bool((maps.abs() > 0).any()):
        raise InputError(f"ESPIRiT found no coil sensitivity in the gridded {cal} k-space centre (try a larger calib "
                         f"or a smaller kernel_width)")
    if dims == "2d+t":
        maps = maps[:, :, None].expand(b, c, shape[0], *nufft_shape).contiguous()
    return maps


__all__ = ["estimate_maps_noncartesian"]
