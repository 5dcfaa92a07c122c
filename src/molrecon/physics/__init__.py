"""MRI forward operators, masks, coil maps and noise."""

from .coils import check_maps_normalised, estimate_coil_maps, normalize_maps, simulate_coil_maps
from .dcf import pipe_menon_dcf
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
from .noncartesian import NonCartesianMRI
from .noncartesian_maps import estimate_maps_noncartesian
from .trajectories import golden_angle_dynamic, radial_trajectory, spiral_trajectory, stack_of_stars

__all__ = [
    "LinearPhysics", "MultiCoilMRI", "fft_centered", "ifft_centered", "RandomMask", "EquispacedMask", "PoissonDiscMask",
    "VariableDensity2DMask", "achieved_acceleration", "default_center_fraction", "mask_for", "simulate_coil_maps",
    "estimate_coil_maps", "normalize_maps", "check_maps_normalised", "add_noise", "complex_gaussian", "check_finite",
    "infer_dims", "NonCartesianMRI", "estimate_maps_noncartesian", "pipe_menon_dcf", "radial_trajectory",
    "spiral_trajectory", "golden_angle_dynamic", "stack_of_stars",
]
