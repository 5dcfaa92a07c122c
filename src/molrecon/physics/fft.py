r"""Centred, orthonormal FFTs (the convention of fastMRI, sigpy and deepinv; see ``docs/conventions.md``).

.. math::
    \mathcal{F}(x) = \operatorname{fftshift}\big(
        \operatorname{fft}(\operatorname{ifftshift}(x),\ \text{norm="ortho"})\big)

over the encoded axes only, so :math:`\mathcal{F}^{-1} = \mathcal{F}^H` and :math:`\|\mathcal{F}\| = 1`.

For an even length :math:`N` the two shifts are phase modulations (BART's way of centring): with
:math:`s_n = (-1)^n`, :math:`\operatorname{fft}(s \odot x)[k] = X[k - N/2]` and
:math:`\operatorname{fft}(\operatorname{ifftshift} x)[k] = (-1)^k X[k]`, hence

.. math:: \mathcal{F}(x)[k] = (-1)^{k - N/2}\, \operatorname{fft}\big((-1)^n x\big)[k],

two sign multiplications instead of two memory rolls (the rolls cost about as much as the FFT itself on CPU).
Odd lengths use the shifts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_SIGNS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _signs(shape: tuple[int, ...], dims: tuple[int, ...], ndim: int, device: torch.device,
           dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable sign grids ``(s_in, s_out)`` over ``dims``, broadcastable to a tensor of rank ``ndim``."""
    key = (shape, dims, ndim, device, dtype)
    hit = _SIGNS.get(key)
    if hit is None:
        s_in = torch.ones((), dtype=dtype, device=device)
        s_out = torch.ones((), dtype=dtype, device=device)
        for d in dims:
            n = shape[d]
            view = [1] * ndim
            view[d] = n
            alt = 1 - 2 * (torch.arange(n, device=device) % 2)
            s_in = s_in * alt.to(dtype).reshape(view)
            s_out = s_out * (alt * (1 - 2 * ((n // 2) % 2))).to(dtype).reshape(view)
        hit = (s_in, s_out)
        if len(_SIGNS) > 64:
            _SIGNS.clear()
        _SIGNS[key] = hit
    return hit


def _modulated(x: torch.Tensor, dims: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    nd = tuple(d % x.ndim for d in dims)
    if any(x.shape[d] % 2 for d in nd) or not x.is_complex():
        return None
    return _signs(tuple(x.shape), nd, x.ndim, x.device, x.real.dtype)


def input_signs(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor | None:
    """The grid ``s_in`` with ``fft_centered(x) = s_out * fftn(s_in * x)`` for ``x``'s shape, or ``None`` when an
    axis of ``dims`` has odd length (then the shifts are used). Since ``s_out² = 1``,
    ``ifft_centered(m * fft_centered(x)) = s_in * ifftn(m * fftn(s_in * x))`` for any diagonal ``m``."""
    signs = _modulated(x, dims)
    return None if signs is None else signs[0]


def fft_centered(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Centred orthonormal forward FFT over ``dims``."""
    dims = tuple(dims)
    signs = _modulated(x, dims)
    if signs is not None:
        s_in, s_out = signs
        return s_out * torch.fft.fftn(s_in * x, dim=dims, norm="ortho")
    x = torch.fft.ifftshift(x, dim=dims)
    x = torch.fft.fftn(x, dim=dims, norm="ortho")
    return torch.fft.fftshift(x, dim=dims)


def ifft_centered(k: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Centred orthonormal inverse FFT over ``dims`` (the adjoint of :func:`fft_centered`)."""
    dims = tuple(dims)
    signs = _modulated(k, dims)
    if signs is not None:
        s_in, s_out = signs
        return s_in * torch.fft.ifftn(s_out * k, dim=dims, norm="ortho")
    k = torch.fft.ifftshift(k, dim=dims)
    k = torch.fft.ifftn(k, dim=dims, norm="ortho")
    return torch.fft.fftshift(k, dim=dims)
