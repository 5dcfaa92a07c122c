"""MRI forward operators, masks, coil maps and noise."""

from .coils import check_maps_normalised, estimate_coil_maps, normalize_maps, simulate_coil_maps
from .fft import fft_centered, ifft_centered
from .linear import LinearPhysics
from .masks import (
    EquispacedMask,
    PoissonDiscMask,
    RandomMask,
    VariableDensity2DMask,
    achieved_acceleration,
    default_center_fraction,
    mask_for,
)
from .mri import MultiCoilMRI, check_finite, infer_dims
from .noise import add_noise, complex_gaussian

__all__ = [
    "LinearPhysics", "MultiCoilMRI", "fft_centered", "ifft_centered", "RandomMask", "EquispacedMask", "PoissonDiscMask",
    "VariableDensity2DMask", "achieved_acceleration", "default_center_fraction", "mask_for", "simulate_coil_maps",
    "estimate_coil_maps", "normalize_maps", "check_maps_normalised", "add_noise", "complex_gaussian", "check_finite",
    "infer_dims",
]
