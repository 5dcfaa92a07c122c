"""Simulation of the built-in sets: per-file random generators, smooth phase, coil maps, noisy multi-coil k-space
(:func:`simulate_file`, the Cartesian kinds) and the periodic deformation of the 2D+time series.

The model and its parameters are described in :mod:`molrecon.data.builtin`; :mod:`molrecon.data.builtin_radial`
reuses these pieces for the non-Cartesian kinds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..physics import simulate_coil_maps
from . import anatomy
from .transforms import fname_seed


def _rng(seed: int, name: str) -> np.random.Generator:
    """A generator for one file: independent of the others, fixed by (build seed, file name)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), fname_seed(name)]))


def smooth_phase(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    r"""A random smooth phase map over ``shape`` (2 or 3 axes): a constant plus a quadratic polynomial in the
    normalised coordinates :math:`u \in [-1, 1]`, :math:`\varphi = a_0 + \sum_i b_i u_i + \sum_{i\le j} c_{ij}
    u_i u_j` with :math:`a_0 \sim U(-\pi, \pi)`, :math:`b \sim N(0, 0.4^2)`, :math:`c \sim N(0, 0.8^2)` —
    the slowly varying phase of B0/B1 inhomogeneity, without large k-space shifts."""
    basis = _phase_basis(tuple(int(n) for n in shape))
    coef = np.concatenate([[rng.uniform(-math.pi, math.pi)], rng.normal(0, 0.4, size=len(shape)),
                           rng.normal(0, 0.8, size=basis.shape[0] - 1 - len(shape))])
    return np.tensordot(coef, basis, axes=1)


@functools.lru_cache(maxsize=8)
def _phase_basis(shape: tuple[int, ...]) -> np.ndarray:
    """``[1, u_i..., u_i u_j (i <= j)...]`` over ``shape`` (the monomials of :func:`smooth_phase`)."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float64) for n in shape], indexing="ij")
    terms = [np.ones(shape)] + list(grids)
    terms += [g * h for i, g in enumerate(grids) for h in grids[i:]]
    return np.stack(terms)


@functools.lru_cache(maxsize=16)
def _coil_maps(spatial: tuple[int, ...], coils: int, radius: float) -> np.ndarray:
    """Birdcage maps (cached: the radius is drawn from a few values, and sigpy's simulator is slow)."""

    return simulate_coil_maps(spatial, coils, radius=radius).numpy()


def simulate_file(mag: np.ndarray, dims: str, coils: int, snr_db: float, rng: np.random.Generator,
                  static_phase: bool = False) -> dict[str, Any]:
    """Simulate one file from magnitude images ``mag`` ``[S, *spatial]`` (see the module docstring).

    Returns ``kspace`` ``[S, C, *sp]`` complex64 (noisy, fully sampled), ``maps`` ``[1, C, *sp]``,
    ``target`` ``[S, *sp]`` complex64 (max |target| = 1), ``rss`` ``[S, *sp]`` float32, ``scale``, ``sigma``
    and ``coil_radius``.
    """
    import scipy.fft

    mag = np.asarray(mag, np.float64)
    spatial = mag.shape[1:]
    # the phase lives on the object: for 2D+time one map for the series (it moves only with the magnitude)
    if static_phase or dims == "2d+t":
        phase = np.broadcast_to(smooth_phase(spatial[-2:] if dims == "2d+t" else spatial, rng), mag.shape)
    else:
        phase = np.stack([smooth_phase(spatial, rng) for _ in range(mag.shape[0])])
    x = mag * np.exp(1j * phase)
    peak = float(np.abs(x).max())
    if peak <= 0:
        raise InputError("simulation got an all-zero image (empty slice)")
    scale = 1.0 / peak
    target = (x * scale).astype(np.complex64)
    radius = float(rng.choice([1.3, 1.4, 1.5, 1.6, 1.7]))
    maps = _coil_maps(tuple(spatial[-2:] if dims == "2d+t" else spatial), coils, radius)
    if dims == "2d+t":
        # static over frames; stored repeated so that every reader (molrecon.io.read_kspace_file too) sees
        # maps of k-space's shape
        maps = np.ascontiguousarray(np.broadcast_to(maps[:, None], (coils, *spatial)))
    axes = (-2, -1) if dims in ("2d", "2d+t") else (-3, -2, -1)

    # The centred orthonormal FFT of docs/conventions.md, computed with scipy here: the same numbers as
    # molrecon.physics.fft_centered, but torch's complex fftshift is several times slower on CPU.
    def fft_c(a: np.ndarray) -> np.ndarray:
        return np.fft.fftshift(scipy.fft.fftn(np.fft.ifftshift(a, axes=axes), axes=axes, norm="ortho"), axes=axes)

    def ifft_c(a: np.ndarray) -> np.ndarray:
        return np.fft.fftshift(scipy.fft.ifftn(np.fft.ifftshift(a, axes=axes), axes=axes, norm="ortho"), axes=axes)

    clean = fft_c(maps[None] * target[:, None]).astype(np.complex64)
    sigma = float(np.sqrt(np.mean(np.abs(clean) ** 2))) / 10 ** (snr_db / 20)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    noise = torch.randn((2, *clean.shape), generator=gen).numpy()
    kspace = (clean + (noise[0] + 1j * noise[1]).astype(np.complex64) * np.float32(sigma / math.sqrt(2)))
    kspace = kspace.astype(np.complex64)
    rss = np.sqrt((np.abs(ifft_c(kspace)) ** 2).sum(axis=1))
    return {"kspace": kspace, "maps": maps[None].astype(np.complex64),
            "target": target, "rss": rss.astype(np.float32), "scale": scale, "sigma": sigma,
            "coil_radius": radius}


def deform_series(image: torch.Tensor, frames: int, rng: np.random.Generator, resp_mm: float = 3.0,
                  card_mm: float = 2.5, card_cycles: int = 2, pixel_mm: float = 1.0) -> torch.Tensor:
    r"""A periodic deformation of one slice ``[N, N]`` → ``[T, N, N]``.

    With :math:`\theta_r = 2\pi t/T + \phi_r`, :math:`\theta_c = 2\pi k t/T + \phi_c` (random phases), the
    backward displacement at position :math:`r` (normalised to [-1, 1]) is

    .. math:: d(r, t) = a_r \sin\theta_r\,(e_{AP} + 0.03\,r_{AP}\,e_{AP}/a_r)
              + a_c \sin\theta_c\,r\,e^{-|r|^2/(2\cdot0.35^2)}

    a respiratory-like antero-posterior shift/stretch and a cardiac-like radial pulsation of the centre.
    The series is periodic (frame ``T`` would equal frame 0).
    """
    n = image.shape[-1]
    half = n * pixel_mm / 2  # mm per unit of normalised coordinate
    a_r, a_c = resp_mm / half, card_mm / half
    phi_r, phi_c = rng.uniform(0, 2 * math.pi, size=2)
    lin = torch.linspace(-1 + 1 / n, 1 - 1 / n, n)  # pixel centres (align_corners=False)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    envelope = torch.exp(-(gx**2 + gy**2) / (2 * 0.35**2))
    grids = []
    for t in range(frames):
        sr = math.sin(2 * math.pi * t / frames + phi_r)
        sc = math.sin(2 * math.pi * card_cycles * t / frames + phi_c)
        dy = a_r * sr + 0.03 * sr * gy + a_c * sc * gy * envelope
        dx = a_c * sc * gx * envelope
        # sample the image at r - d(r): content moves by +d
        grids.append(torch.stack([gx - dx, gy - dy], dim=-1))
    grid = torch.stack(grids).to(torch.float32)
    src = image[None, None].expand(frames, 1, n, n).to(torch.float32)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def moving_series(contrast: str, z: int, frames: int, size: int, rng: np.random.Generator, resp_mm: float = 3.0,
                  card_mm: float = 2.5, card_cycles: int = 2) -> np.ndarray:
    """Magnitude frames ``[T, size, size]`` of the axial slice ``z`` (1 mm index) of ``contrast`` under
    :func:`deform_series` (deformed on the 1 mm grid, then area-resampled to ``size``)."""
    hi = anatomy._square_axial(anatomy.contrast_volume(contrast), [z])[0]  # 1 mm grid
    series = deform_series(hi, frames, rng, resp_mm, card_mm, card_cycles,
                           pixel_mm=anatomy.axial_fov_mm() / hi.shape[-1])
    return F.interpolate(series[:, None], size=(size, size), mode="area")[:, 0].numpy()
