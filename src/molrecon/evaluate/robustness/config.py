"""Inputs and settings of the robustness studies: the examples (slices) and :class:`RobustnessConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...errors import InputError
from ...physics import LinearPhysics

PARTS = ("attack", "random", "convergence", "uniqueness", "shift")



# ------------------------------------------------------------------------------------------------- inputs
@dataclass
class Example:
    """One slice: ``y`` ``[1, C, *sp]`` (masked k-space), its ``physics``, ``target`` ``[1, *sp]`` (complex),
    ``max_value`` (PSNR data range: the maximum of the target volume) and a ``name``."""

    y: torch.Tensor
    physics: LinearPhysics
    target: torch.Tensor
    max_value: float
    name: str


@dataclass
class RobustnessConfig:
    """What to measure and how hard (defaults sized for 4 small 2D models × 2 slices on 2 CPU cores).

    eps: attack/perturbation radii relative to ‖b‖. attack_steps: gradient evaluations per attack.
    attack_restarts: random starts per radius (the best is kept). attack_step_size: first step, in radii.
    random_draws: random perturbations per radius. attack_tol: fixed-point tolerance inside the attack (None:
    the model's own). eval_tol / eval_max_iter: tight solves for the reported numbers. conv_iters / conv_tol:
    the convergence study. conv_slices / uniqueness_slices: how many of the slices those use.
    accelerations: distribution-shift accelerations (besides the data's own). noise_snr_db: extra noise levels.
    center_fraction: fastMRI centre fraction per acceleration (None: 0.08·4/acc, fastMRI's 0.08@4×, 0.04@8×).
    parts: which measurements to run. seed: everything random is seeded from it.
    """

    eps: tuple[float, ...] = (0.01, 0.02, 0.05)
    attack_steps: int = 6
    attack_restarts: int = 1
    attack_step_size: float = 1.0
    random_draws: int = 4
    attack_tol: float | None = None
    eval_tol: float = 1e-6
    eval_max_iter: int = 300
    conv_iters: int = 100
    conv_tol: float = 1e-7
    conv_slices: int = 1
    uniqueness_slices: int = 1
    accelerations: tuple[float, ...] = (2.0, 6.0, 8.0)
    noise_snr_db: tuple[float, ...] = (20.0,)
    center_fraction: float | None = None
    parts: tuple[str, ...] = PARTS
    seed: int = 0

    def validate(self) -> RobustnessConfig:
        if not self.eps or any(not (e > 0) or not math.isfinite(e) for e in self.eps):
            raise InputError(f"eps must be positive numbers, got {list(self.eps)}")
        if self.attack_steps < 1 or self.attack_restarts < 1:
            raise InputError(f"attack_steps and attack_restarts must be >= 1, got {self.attack_steps}, "
                             f"{self.attack_restarts}")
        if self.random_draws < 0 or self.conv_iters < 1 or self.eval_max_iter < 1:
            raise InputError("random_draws must be >= 0, conv_iters and eval_max_iter >= 1")
        if not (self.attack_step_size > 0):
            raise InputError(f"attack_step_size must be > 0, got {self.attack_step_size}")
        if any(a < 1 for a in self.accelerations):
            raise InputError(f"accelerations must be >= 1, got {list(self.accelerations)}")
        bad = [p for p in self.parts if p not in PARTS]
        if bad:
            raise InputError(f"unknown part(s) {bad} (choose from {', '.join(PARTS)})")
        return self
