"""Iterative solvers: conjugate gradient, fixed-point and Anderson iterations, implicit backward."""

from .cg import batch_dot, conjugate_gradient
from .info import SolverInfo

__all__ = ["conjugate_gradient", "batch_dot", "SolverInfo"]
