"""Complex Gaussian measurement noise at a given standard deviation or SNR."""

from __future__ import annotations

import math

import torch

from ..errors import InputError


def complex_gaussian(shape: tuple[int, ...], sigma: float, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Circular complex Gaussian samples with ``E|n|² = sigma²`` (real and imaginary parts each σ/√2)."""
    re = torch.randn(shape, generator=generator, device=device)
    im = torch.randn(shape, generator=generator, device=device)
    return torch.complex(re, im) * (sigma / math.sqrt(2))


def add_noise(y: torch.Tensor, mask: torch.Tensor | None = None, sigma: float | None = None,
              snr_db: float | None = None, seed: int | None = None) -> tuple[torch.Tensor, float]:
    """Add complex Gaussian noise to the sampled entries of ``y``; return ``(noisy, sigma)``.

    Give exactly one of ``sigma`` (per-sample standard deviation, ``E|n|² = σ²``) or ``snr_db``, defined as
    ``20·log10(rms(y on sampled entries) / σ)``.
    """
    if (sigma is None) == (snr_db is None):
        raise InputError("give exactly one of sigma or snr_db")
    sampled = torch.ones_like(y.real, dtype=torch.bool) if mask is None else torch.broadcast_to(mask > 0, y.shape)
    if snr_db is not None:
        rms = y[sampled].abs().pow(2).mean().sqrt().item()
        sigma = rms / (10 ** (snr_db / 20))
    if sigma < 0:
        raise InputError(f"sigma must be >= 0, got {sigma}")
    gen = None
    if seed is not None:
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = complex_gaussian(tuple(y.shape), float(sigma), gen).to(y.device, y.dtype)
    return y + noise * sampled.to(y.dtype), float(sigma)
