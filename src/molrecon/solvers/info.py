"""What an iterative solver reports: per-sample iterations, residual history and convergence."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SolverInfo:
    """Per-batch-element outcome of an iterative solve.

    ``iterations`` and ``converged`` are ``[B]`` tensors; ``residuals`` holds one ``[B]`` tensor of relative
    residuals per iteration (the first entry is the starting residual). ``extra`` carries solver-specific
    numbers (e.g. MOL's a-posteriori error bound).
    """

    iterations: torch.Tensor
    converged: torch.Tensor
    residuals: list[torch.Tensor] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @property
    def final_residual(self) -> torch.Tensor:
        return self.residuals[-1] if self.residuals else torch.zeros_like(self.iterations, dtype=torch.float32)

    def residual_history(self) -> torch.Tensor:
        """Residuals as a ``[num_iterations + 1, B]`` tensor."""
        return torch.stack(self.residuals) if self.residuals else torch.empty(0)

    def to_dict(self) -> dict:
        out = {
            "iterations": self.iterations.tolist(),
            "converged": self.converged.tolist(),
            "final_residual": self.final_residual.tolist(),
        }
        for k, v in self.extra.items():
            out[k] = v.tolist() if isinstance(v, torch.Tensor) else v
        return out
