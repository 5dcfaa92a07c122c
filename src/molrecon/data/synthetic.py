"""A tiny in-memory synthetic multi-coil dataset for smoke tests of the trainer (``data.source: synthetic``).

Each slice is a sum of random ellipses with a smooth phase (deterministic for ``seed`` and the slice index),
multiplied by simulated birdcage coil maps, transformed with the centred orthonormal FFT and masked with a
fastMRI ``RandomMask`` seeded per slice. The k-space is simulated from the image ("inverse crime"): use it to
test code paths, never to report reconstruction quality. Items have the layout of ``molrecon.data``'s
``SliceDataset``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..physics import RandomMask, fft_centered, simulate_coil_maps


def _phantom(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    img = np.zeros(shape, dtype=np.float64)
    for _ in range(int(rng.integers(3, 7))):
        cy, cx = rng.uniform(-0.4, 0.4, size=2)
        ay, ax = rng.uniform(0.1, 0.5, size=2)
        theta = rng.uniform(0, np.pi)
        c, s = np.cos(theta), np.sin(theta)
        u, v = c * (xx - cx) + s * (yy - cy), -s * (xx - cx) + c * (yy - cy)
        img += rng.uniform(0.2, 1.0) * ((u / ax) ** 2 + (v / ay) ** 2 <= 1)
    phase = rng.uniform(-0.5, 0.5) * xx + rng.uniform(-0.5, 0.5) * yy
    return (img * np.exp(1j * np.pi * phase)).astype(np.complex64)


class SyntheticSliceDataset(Dataset):
    """``num`` synthetic 2D slices ``shape`` with ``num_coils`` coils, masked at ``acceleration``."""

    def __init__(self, num: int = 8, shape: Sequence[int] = (64, 64), num_coils: int = 4,
                 acceleration: float = 4.0, center_fraction: float = 0.08, seed: int = 0,
                 noise_std: float = 0.0) -> None:

        shape = (int(shape[0]), int(shape[1]))
        self.maps = simulate_coil_maps(shape, num_coils)
        self.items: list[dict[str, Any]] = []
        mask_func = RandomMask(center_fraction, acceleration)
        for i in range(int(num)):
            rng = np.random.default_rng([int(seed), i])
            target = torch.from_numpy(_phantom(shape, rng))
            mask = mask_func(shape, seed=int(seed) * 100003 + i)[None]  # [1, 1, W] like SliceDataset's items
            k = fft_centered(self.maps * target, (-2, -1))
            if noise_std > 0:
                noise = torch.from_numpy((rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
                                         .astype(np.complex64)) * noise_std
                k = k + noise
            self.items.append({
                "kspace": (k * mask).to(torch.complex64),
                "maps": self.maps,
                "mask": mask.to(torch.float32),
                "target": target,
                "max_value": float(target.abs().max()),
                "fname": f"synthetic_{seed}",
                "slice": i,
                "dims": "2d",
            })

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return dict(self.items[index])
