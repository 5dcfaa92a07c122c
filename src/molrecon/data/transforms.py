"""Small array helpers shared by the loaders (fastMRI-style centre crop, root-sum-of-squares, seeds)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch


def center_crop(x: torch.Tensor | np.ndarray, shape: Sequence[int]) -> torch.Tensor | np.ndarray:
    """Centre-crop the last ``len(shape)`` axes to ``shape`` exactly as fastMRI's ``center_crop`` does
    (start ``(n - s) // 2``); axes smaller than the crop are left as they are."""
    shape = tuple(int(s) for s in shape)
    index = [slice(None)] * (x.ndim - len(shape))
    for n, s in zip(x.shape[-len(shape):], shape):
        start = max((n - s) // 2, 0)
        index.append(slice(start, start + min(s, n)))
    return x[tuple(index)]


def rss(coil_images: torch.Tensor | np.ndarray, coil_axis: int = 0) -> torch.Tensor | np.ndarray:
    """Root-sum-of-squares coil combination ``sqrt(Σ_c |x_c|²)``."""
    if isinstance(coil_images, torch.Tensor):
        return coil_images.abs().pow(2).sum(dim=coil_axis).sqrt()
    return np.sqrt((np.abs(coil_images) ** 2).sum(axis=coil_axis))


def fname_seed(fname: str) -> int:
    """The per-file mask seed: CRC-32 of the file's base name (fastMRI seeds with the name too, as
    ``tuple(map(ord, fname))``; an ``int`` is used here because the Poisson-disc mask needs one)."""
    return zlib.crc32(str(fname).encode("utf-8"))
