r"""Centred, orthonormal FFTs (the convention of fastMRI, sigpy and deepinv; see ``shared/CONVENTIONS.md``).

.. math::
    \mathcal{F}(x) = \operatorname{fftshift}\big(
        \operatorname{fft}(\operatorname{ifftshift}(x),\ \text{norm="ortho"})\big)

over the encoded axes only, so :math:`\mathcal{F}^{-1} = \mathcal{F}^H` and :math:`\|\mathcal{F}\| = 1`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def fft_centered(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Centred orthonormal forward FFT over ``dims``."""
    dims = tuple(dims)
    x = torch.fft.ifftshift(x, dim=dims)
    x = torch.fft.fftn(x, dim=dims, norm="ortho")
    return torch.fft.fftshift(x, dim=dims)


def ifft_centered(k: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Centred orthonormal inverse FFT over ``dims`` (the adjoint of :func:`fft_centered`)."""
    dims = tuple(dims)
    k = torch.fft.ifftshift(k, dim=dims)
    k = torch.fft.ifftn(k, dim=dims, norm="ortho")
    return torch.fft.fftshift(k, dim=dims)
