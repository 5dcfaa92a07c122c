"""Iterative solvers: conjugate gradient, fixed-point and Anderson iterations, implicit backward."""

from .cg import conjugate_gradient
from .fixed_point import fixed_point_solve, indexed
from .implicit import DCSolve, attach_implicit_backward, dc_solve
from .info import SolverInfo

__all__ = ["conjugate_gradient", "SolverInfo", "fixed_point_solve", "indexed", "DCSolve", "dc_solve",
           "attach_implicit_backward"]
