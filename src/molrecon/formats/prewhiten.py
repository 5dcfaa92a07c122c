r"""Noise prewhitening from the noise-adjustment scans of a raw file.

With the noise samples :math:`N` (``[C, n]``), the coil covariance is :math:`\Psi = N N^H / (n - 1)`; with its
Cholesky factor :math:`\Psi = L L^H`, :math:`W = L^{-1}` makes the noise of :math:`W y` white with unit variance
(Gadgetron's noise adjustment does the same). molrecon scales :math:`W` by :math:`\sqrt{\operatorname{tr}\Psi / C}`
so the whitened data keep the mean noise level and signal scale of the original: for noise that is already
white, :math:`W = I` and the regularisation weights tuned on unwhitened data still apply.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def noise_covariance(noise: np.ndarray) -> np.ndarray:
    """Sample coil covariance ``[C, C]`` of noise samples ``[C, n]`` (complex)."""
    noise = np.asarray(noise, dtype=np.complex128)
    if noise.ndim != 2 or noise.shape[1] < 2:
        raise InputError(f"noise samples must be [coils, n >= 2], got shape {noise.shape}")
    centred = noise - noise.mean(axis=1, keepdims=True)
    return centred @ centred.conj().T / (noise.shape[1] - 1)


def whitening_matrix(cov: np.ndarray) -> np.ndarray:
    """``W`` with ``W Ψ W^H = (tr Ψ / C) I`` (see the module docstring); refuses a singular covariance."""
    cov = np.asarray(cov, dtype=np.complex128)
    try:
        L = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise InputError("noise covariance is not positive definite (a dead or duplicated coil?); "
                         "cannot prewhiten") from None
    scale = np.sqrt(np.real(np.trace(cov)) / cov.shape[0])
    return (np.linalg.inv(L) * scale).astype(np.complex128)


def apply_whitening(data: np.ndarray, W: np.ndarray, coil_axis: int = 1) -> np.ndarray:
    """``W`` applied along the coil axis of ``data`` (any shape), complex64 out."""
    moved = np.moveaxis(np.asarray(data), coil_axis, -1)
    return np.moveaxis(moved @ W.T, -1, coil_axis).astype(np.complex64)
