"""Coil sensitivities: a birdcage simulator and ESPIRiT estimation (both through sigpy), and normalisation.

Convention (``docs/conventions.md``): maps are normalised so that ``Σ_c |S_c|² = 1`` inside the object and
0 outside; then ``‖A‖ ≤ 1`` for a 0/1 mask.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError


def normalize_maps(maps: torch.Tensor, support: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Scale ``maps`` ``[..., C, *spatial]`` (coil axis given by ``support``'s rank) so that Σ_c|S_c|² = 1 on
    ``support`` (a boolean ``[*spatial]`` tensor; everywhere if ``None``) and 0 outside."""
    coil_axis = maps.ndim - (support.ndim if support is not None else maps.ndim - 1) - 1
    rss = maps.abs().pow(2).sum(dim=coil_axis, keepdim=True).sqrt()
    out = maps / rss.clamp_min(eps)
    if support is not None:
        out = out * support.to(out.dtype)
    return out


def check_maps_normalised(maps: torch.Tensor, tol: float = 0.05, source: str = "coil maps") -> bool:
    """Warn (and return ``False``) when Σ_c|S_c|² is neither ≈1 nor ≈0 on most pixels (maps ``[B, C, ...]``)."""
    rss2 = maps.abs().pow(2).sum(dim=1)
    inside = rss2 > 0.5
    off = ((rss2 - 1).abs() > tol) & inside
    ok = bool(inside.any()) and float(off.float().sum() / inside.float().sum().clamp_min(1)) < 0.05
    if not ok:
        warnings.warn(f"{source}: sum of |S_c|^2 is not 1 inside the object (the convention); step sizes and "
                      f"regularisation weights may not transfer", stacklevel=2)
    return ok


def simulate_coil_maps(spatial_shape: Sequence[int], num_coils: int = 8, support: torch.Tensor | None = None,
                       radius: float = 1.5, dims: str | None = None) -> torch.Tensor:
    """Smooth birdcage-like sensitivities ``[C, *spatial]`` complex64 (sigpy's ``birdcage_maps``), normalised.

    For 2D+time (``dims="2d+t"``, spatial ``(T, H, W)``) the maps are static: computed on ``(H, W)`` and
    repeated over frames.
    """
    import sigpy.mri

    spatial_shape = tuple(int(s) for s in spatial_shape)
    if num_coils < 1:
        raise InputError(f"num_coils must be >= 1, got {num_coils}")
    if dims == "2d+t":
        frame = simulate_coil_maps(spatial_shape[1:], num_coils, None if support is None else support.any(0),
                                   radius)
        return frame[:, None].expand(num_coils, *spatial_shape).contiguous()
    maps = sigpy.mri.birdcage_maps((num_coils, *spatial_shape), r=radius, nzz=max(1, min(num_coils, 8)))
    return normalize_maps(torch.from_numpy(maps.astype(np.complex64)), support)


def estimate_coil_maps(kspace: torch.Tensor, method: str = "espirit", calib_width: int = 24,
                       dims: str | None = None, threshold: float = 0.02, crop: float = 0.95,
                       kernel_width: int = 6) -> torch.Tensor:
    """Estimate coil maps from the fully sampled centre of ``kspace`` ``[B, C, *spatial]``.

    ``method="espirit"`` runs sigpy's ``EspiritCalib`` per batch element (maps are normalised and zero
    outside the object, as the convention asks). For 2D+time the time-averaged k-space gives static maps,
    repeated over frames. Returns maps of the same shape as ``kspace``.
    """
    import sigpy.mri.app

    if method != "espirit":
        raise InputError(f"unknown coil-map method {method!r} (supported: 'espirit')")
    if not kspace.is_complex() or kspace.ndim not in (4, 5):
        raise InputError(f"k-space for ESPIRiT must be complex [B, C, *spatial], got {tuple(kspace.shape)} "
                         f"{kspace.dtype}")
    if dims is None:
        dims = "2d" if kspace.ndim == 4 else "3d"
    out = []
    for k in kspace.detach().cpu().numpy():
        if dims == "2d+t":
            k = k.mean(axis=1)
        width = min(calib_width, *k.shape[1:])
        maps = sigpy.mri.app.EspiritCalib(k.astype(np.complex64), calib_width=width, thresh=threshold,
                                          kernel_width=kernel_width, crop=crop, show_pbar=False).run()
        maps = np.asarray(maps, dtype=np.complex64)
        if dims == "2d+t":
            maps = np.broadcast_to(maps[:, None], (maps.shape[0], kspace.shape[2], *maps.shape[1:])).copy()
        out.append(maps)
    return torch.from_numpy(np.stack(out)).to(kspace.device)
