r"""Non-Cartesian k-space trajectories: radial (uniform or golden angle), spiral, dynamic golden-angle radial and
3D stack-of-stars.

Convention (sigpy's and BART's, ``docs/conventions.md``): coordinates are in pixels, the k-space edge of an
``N``-point axis is at ``±N/2``, and ``trajectory[..., d]`` belongs to the ``d``-th encoded image axis (``(ky, kx)``
for an image ``(H, W)``, ``(kz, ky, kx)`` for ``(D, H, W)``). Every trajectory is deterministic (no randomness), a
float32 tensor ``[K, ndim]`` (``[T, K, 2]`` for one trajectory per frame).

Example
-------
>>> from molrecon.physics.trajectories import radial_trajectory, golden_angle_dynamic
>>> radial_trajectory(8, 32).shape
torch.Size([256, 2])
>>> golden_angle_dynamic(4, 5, 32).shape
torch.Size([4, 160, 2])
>>> float(radial_trajectory(8, 32).abs().max()) <= 16
True
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError

#: the golden angle for spokes through the centre (180° / golden ratio, Winkelmann et al. 2007)
GOLDEN_ANGLE = math.pi * (math.sqrt(5) - 1) / 2


def _positive(**values: float) -> None:
    for name, v in values.items():
        if v is None or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v}")


def _spokes(angles: torch.Tensor, n_readout: int, image_size: int) -> torch.Tensor:
    """Spokes ``[S * n_readout, 2]`` through the centre at ``angles``; readout positions ``(j - n/2) · N/n`` so that
    the samples span ``[-N/2, N/2)`` with ``n_readout / N`` samples per pixel (readout oversampling)."""
    r = (torch.arange(n_readout, dtype=torch.float64) - n_readout / 2) * (image_size / n_readout)
    ky = r[None, :] * torch.sin(angles)[:, None]
    kx = r[None, :] * torch.cos(angles)[:, None]
    return torch.stack([ky, kx], dim=-1).reshape(-1, 2).to(torch.float32)


def radial_trajectory(n_spokes: int, n_readout: int, golden: bool = True, image_size: int | None = None,
                      first_spoke: int = 0) -> torch.Tensor:
    """2D radial trajectory ``[n_spokes · n_readout, 2]`` (spoke-major).

    Spoke ``i`` has angle ``(first_spoke + i) · 111.25°`` (golden angle) or ``i · 180° / n_spokes`` (uniform);
    ``image_size`` (default ``n_readout``) is the matrix ``N`` whose edge ``±N/2`` the readout spans, so
    ``n_readout = 2N`` is a twofold-oversampled readout.
    """
    _positive(n_spokes=n_spokes, n_readout=n_readout)
    image_size = n_readout if image_size is None else image_size
    _positive(image_size=image_size)
    idx = torch.arange(first_spoke, first_spoke + n_spokes, dtype=torch.float64)
    angles = idx * GOLDEN_ANGLE if golden else idx * math.pi / n_spokes
    return _spokes(angles, n_readout, image_size)


def golden_angle_dynamic(n_frames: int, spokes_per_frame: int, n_readout: int,
                         image_size: int | None = None) -> torch.Tensor:
    """2D+t golden-angle radial ``[T, spokes_per_frame · n_readout, 2]``: frame ``t`` holds the consecutive golden
    angles ``t·S … t·S + S − 1`` (so any window of frames is near-uniformly covered)."""
    _positive(n_frames=n_frames, spokes_per_frame=spokes_per_frame)
    return torch.stack([radial_trajectory(spokes_per_frame, n_readout, True, image_size, t * spokes_per_frame)
                        for t in range(n_frames)])


def stack_of_stars(n_partitions: int, n_spokes: int, n_readout: int, golden: bool = True,
                   image_size: int | None = None) -> torch.Tensor:
    """3D stack-of-stars ``[n_partitions · n_spokes · n_readout, 3]`` as ``(kz, ky, kx)``: Cartesian partitions
    ``kz = −P/2 … P/2 − 1`` (image depth ``D = n_partitions``), each with the same radial star in ``(ky, kx)``."""
    _positive(n_partitions=n_partitions)
    star = radial_trajectory(n_spokes, n_readout, golden, image_size)
    kz = torch.arange(n_partitions, dtype=torch.float32) - n_partitions // 2
    kz = kz[:, None, None].expand(n_partitions, star.shape[0], 1)
    return torch.cat([kz, star[None].expand(n_partitions, -1, -1)], dim=-1).reshape(-1, 3).contiguous()


def spiral_trajectory(n_interleaves: int, n_samples: int, image_size: int, undersampling: float = 1.0,
                      density: float = 1.5) -> torch.Tensor:
    r"""Variable-density Archimedean spiral ``[n_interleaves · n_samples, 2]`` (interleaf-major).

    Interleaf ``j``: :math:`k(t) = \tfrac N2\, t^{p}\, e^{i(2\pi n t + 2\pi j / J)}`, ``t ∈ [0, 1]``, with
    ``p = density`` (``p > 1`` samples the centre more densely) and ``n = N / (2 J · undersampling)`` turns, so
    that at ``undersampling = 1`` the rings at the edge are one pixel apart (Nyquist for a ``p = 1`` spiral).
    ``ky`` is the imaginary part, ``kx`` the real part.
    """
    _positive(n_interleaves=n_interleaves, n_samples=n_samples, image_size=image_size)
    if not undersampling > 0 or not density > 0:
        raise InputError(f"undersampling and density must be > 0, got {undersampling}, {density}")
    turns = image_size / (2 * n_interleaves * undersampling)
    t = torch.linspace(0, 1, n_samples, dtype=torch.float64)
    radius = image_size / 2 * t.pow(density)
    # the edge sample sits just inside ±N/2 so that every coordinate lies in the half-open NUFFT range
    radius = radius * (1 - 1e-6)
    phase = 2 * math.pi * turns * t[None, :] + 2 * math.pi * torch.arange(n_interleaves)[:, None] / n_interleaves
    traj = torch.stack([radius * torch.sin(phase), radius * torch.cos(phase)], dim=-1)
    return traj.reshape(-1, 2).to(torch.float32)


__all__ = ["GOLDEN_ANGLE", "radial_trajectory", "golden_angle_dynamic", "stack_of_stars", "spiral_trajectory"]
