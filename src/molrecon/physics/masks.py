"""Cartesian sampling masks as small seeded classes (fastMRI semantics for the 1-D masks).

Each mask object is called with the spatial k-space shape and a seed and returns a float32 0/1 tensor that
broadcasts against k-space ``[B, C, *spatial]``:

- 2D ``(H, W)``: a column mask of shape ``(1, W)`` (phase encoding along ``W``, readout along ``H``);
- 3D ``(D, H, W)``: a ``(1, H, W)`` mask over the two phase-encoding axes (readout along ``D``);
- 2D+time ``(T, H, W)``: a ``(T, 1, W)`` mask, a different column pattern per frame.

``achieved_acceleration(mask, spatial_shape)`` reports the acceleration actually reached.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError


def achieved_acceleration(mask: torch.Tensor, spatial_shape: Sequence[int]) -> float:
    """Number of k-space locations divided by the number sampled (for the encoded grid ``spatial_shape``)."""
    full = torch.broadcast_to(mask.reshape(mask.shape[-len(spatial_shape):]) if mask.ndim > len(spatial_shape)
                              else mask, tuple(spatial_shape))
    sampled = float(full.sum())
    if sampled == 0:
        raise InputError("mask is empty: no k-space sample is acquired")
    return full.numel() / sampled


def _check_accel(center_fraction: float, acceleration: float) -> None:
    if acceleration < 1:
        raise InputError(f"acceleration must be >= 1, got {acceleration}")
    if not 0 <= center_fraction < 1:
        raise InputError(f"center_fraction must be in [0, 1), got {center_fraction}")
    if center_fraction * acceleration > 1:
        raise InputError(f"center_fraction {center_fraction} alone samples more than 1/{acceleration} of k-space")


class ColumnMask:
    """Base of the 1-D (column) masks: ``__call__`` dispatches on the spatial rank."""

    def __init__(self, center_fraction: float = 0.08, acceleration: float = 4.0) -> None:
        _check_accel(center_fraction, acceleration)
        self.center_fraction = float(center_fraction)
        self.acceleration = float(acceleration)

    def columns(self, num_cols: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _center(self, num_cols: int) -> tuple[int, int]:
        num_low = int(round(num_cols * self.center_fraction))
        pad = (num_cols - num_low + 1) // 2
        return pad, num_low

    def __call__(self, spatial_shape: Sequence[int], seed: int | None = 0, dims: str | None = None) -> torch.Tensor:
        spatial_shape = tuple(int(s) for s in spatial_shape)
        rng = np.random.default_rng(seed)
        if len(spatial_shape) == 2:
            return torch.from_numpy(self.columns(spatial_shape[-1], rng)[None].astype(np.float32))
        if len(spatial_shape) == 3 and dims == "2d+t":
            frames = [self.columns(spatial_shape[-1], rng) for _ in range(spatial_shape[0])]
            return torch.from_numpy(np.stack(frames)[:, None].astype(np.float32))
        raise InputError(f"{type(self).__name__} is a column mask for 2D or 2D+time (dims='2d+t') shapes, got "
                         f"{spatial_shape} (use PoissonDiscMask or VariableDensity2DMask for 3D)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(center_fraction={self.center_fraction}, acceleration={self.acceleration})"


class RandomMask(ColumnMask):
    """fastMRI ``RandomMaskFunc``: a fully sampled centre of ``round(N·center_fraction)`` columns plus random
    columns with the probability that makes the expected acceleration equal ``acceleration``."""

    def columns(self, num_cols: int, rng: np.random.Generator) -> np.ndarray:
        pad, num_low = self._center(num_cols)
        prob = (num_cols / self.acceleration - num_low) / (num_cols - num_low)
        mask = rng.uniform(size=num_cols) < prob
        mask[pad:pad + num_low] = True
        return mask


class EquispacedMask(ColumnMask):
    """fastMRI ``EquispacedMaskFunc``: a fully sampled centre plus equally spaced columns with a random offset,
    the spacing adjusted so that the total acceleration equals ``acceleration``."""

    def columns(self, num_cols: int, rng: np.random.Generator) -> np.ndarray:
        pad, num_low = self._center(num_cols)
        mask = np.zeros(num_cols, dtype=bool)
        adjusted = (self.acceleration * (num_low - num_cols)) / (num_low * self.acceleration - num_cols)
        offset = int(rng.integers(0, max(1, round(adjusted))))
        picks = np.around(np.arange(offset, num_cols - 1, adjusted)).astype(int)
        mask[picks] = True
        mask[pad:pad + num_low] = True
        return mask


class _PlaneMask:
    """Base of the 2-D phase-encoding masks for 3D volumes ``(D, H, W)`` (readout along ``D``)."""

    def plane(self, shape: tuple[int, int], rng_seed: int | None) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, spatial_shape: Sequence[int], seed: int | None = 0, dims: str | None = None) -> torch.Tensor:
        spatial_shape = tuple(int(s) for s in spatial_shape)
        if len(spatial_shape) == 2:
            return torch.from_numpy(self.plane(spatial_shape, seed).astype(np.float32))
        if len(spatial_shape) != 3 or dims == "2d+t":
            raise InputError(f"{type(self).__name__} is for 3D volumes (D, H, W), got {spatial_shape}")
        return torch.from_numpy(self.plane(spatial_shape[1:], seed)[None].astype(np.float32))


class PoissonDiscMask(_PlaneMask):
    """Variable-density Poisson-disc sampling of the two phase-encoding axes with a fully sampled
    ``calib_size × calib_size`` centre (sigpy's ``poisson``)."""

    def __init__(self, acceleration: float = 4.0, calib_size: int = 12) -> None:
        if acceleration < 1:
            raise InputError(f"acceleration must be >= 1, got {acceleration}")
        self.acceleration = float(acceleration)
        self.calib_size = int(calib_size)

    def plane(self, shape: tuple[int, int], rng_seed: int | None) -> np.ndarray:
        # sigpy's Poisson-disc kernel, with sigpy's bisection on the density slope but a capped number of
        # steps: sigpy's own loop never ends on small grids where no slope hits the target within its tolerance.
        from sigpy.mri.samp import _poisson

        if self.acceleration <= 1:
            return np.ones(shape, dtype=bool)
        ny, nx = shape
        calib = (min(self.calib_size, ny), min(self.calib_size, nx))
        seed = 0 if rng_seed is None else int(rng_seed) % (2**32)
        yy, xx = np.mgrid[:ny, :nx].astype(np.float64)
        xx = np.maximum(abs(xx - nx / 2) - calib[1] / 2, 0)
        xx /= max(xx.max(), 1e-12)
        yy = np.maximum(abs(yy - ny / 2) - calib[0] / 2, 0)
        yy /= max(yy.max(), 1e-12)
        r = np.sqrt(xx**2 + yy**2)
        state = np.random.get_state()  # sigpy's kernel draws from numpy's global generator
        try:
            lo, hi = 0.0, float(max(nx, ny))
            best, best_err = None, np.inf
            for _ in range(40):
                slope = 0.5 * (lo + hi)
                radius_x = np.clip((1 + r * slope) * nx / max(nx, ny), 1, None)
                radius_y = np.clip((1 + r * slope) * ny / max(nx, ny), 1, None)
                mask = _poisson(nx, ny, 30, radius_x, radius_y, calib, seed) * (r < 1)
                mask[ny // 2 - calib[0] // 2: ny // 2 + (calib[0] + 1) // 2,
                     nx // 2 - calib[1] // 2: nx // 2 + (calib[1] + 1) // 2] = 1
                accel = mask.size / max(mask.sum(), 1)
                if abs(accel - self.acceleration) < best_err:
                    best, best_err = mask.copy(), abs(accel - self.acceleration)
                if best_err < 0.02 * self.acceleration:
                    break
                if accel < self.acceleration:
                    lo = slope
                else:
                    hi = slope
        finally:
            np.random.set_state(state)
        if best_err > 0.1 * self.acceleration:
            warnings.warn(f"PoissonDiscMask: {shape} grid with a {calib} calibration region reaches "
                          f"{best.size / best.sum():.2f}x, not {self.acceleration}x", stacklevel=3)
        return best.reshape(shape) > 0

    def __repr__(self) -> str:
        return f"PoissonDiscMask(acceleration={self.acceleration}, calib_size={self.calib_size})"


class VariableDensity2DMask(_PlaneMask):
    """Random 2-D variable-density sampling: probability ∝ (1 − r)^power (r the normalised radius),
    scaled to reach ``acceleration``, with a fully sampled elliptical centre of ``center_fraction``."""

    def __init__(self, acceleration: float = 4.0, center_fraction: float = 0.08, power: float = 2.0) -> None:
        _check_accel(center_fraction, acceleration)
        self.acceleration = float(acceleration)
        self.center_fraction = float(center_fraction)
        self.power = float(power)

    def plane(self, shape: tuple[int, int], rng_seed: int | None) -> np.ndarray:
        rng = np.random.default_rng(rng_seed)
        ky, kz = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
        r = np.sqrt(ky**2 + kz**2) / np.sqrt(2)
        centre = r < self.center_fraction
        density = (1 - r) ** self.power
        target = shape[0] * shape[1] / self.acceleration - centre.sum()
        free = ~centre
        # Bisection on a scale so the expected number of samples equals the target.
        lo, hi = 0.0, 1e6
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if np.minimum(1, mid * density[free]).sum() > target:
                hi = mid
            else:
                lo = mid
        prob = np.minimum(1, lo * density)
        return centre | (rng.uniform(size=shape) < prob)

    def __repr__(self) -> str:
        return (f"VariableDensity2DMask(acceleration={self.acceleration}, center_fraction={self.center_fraction}, "
                f"power={self.power})")


def default_center_fraction(acceleration: float) -> float:
    """The centre fraction used when none is given: fastMRI's pairs (0.08 at 4×, 0.04 at 8×) continued as
    ``0.32 / acceleration``, capped at 0.16 (so 0.16 at 2×)."""
    return float(min(0.16, 0.32 / float(acceleration)))


def mask_for(dims: str, acceleration: float, center_fraction: float | None = None,
             kind: str = "random") -> ColumnMask | _PlaneMask:
    """The default mask object for ``dims`` ("2d", "3d", "2d+t") at ``acceleration``, with
    :func:`default_center_fraction` unless ``center_fraction`` is given."""
    if center_fraction is None:
        center_fraction = default_center_fraction(acceleration)
    if dims == "3d":
        return PoissonDiscMask(acceleration) if kind in ("random", "poisson") else VariableDensity2DMask(
            acceleration, center_fraction)
    if kind == "equispaced":
        return EquispacedMask(center_fraction, acceleration)
    return RandomMask(center_fraction, acceleration)
