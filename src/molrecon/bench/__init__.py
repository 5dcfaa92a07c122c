"""Benchmarks: peak training memory per step (more added by the benchmark module)."""

from .memory import measure_step_memory, register_method

__all__ = ["measure_step_memory", "register_method"]
