"""Benchmarks behind ``molrecon bench``: peak training memory vs iterations (:mod:`.memory`, swept by
:mod:`.memory_sweep`), inference speed and time profile (:mod:`.speed`), the quality table (:mod:`.quality`) and
their plots (:mod:`.plots`).

Only the memory entry points are imported here (light, no torch at import); import the others directly.
"""

from .memory import measure_step_memory, register_method
from .memory_sweep import run_memory_sweep, summarize_memory

__all__ = ["measure_step_memory", "register_method", "run_memory_sweep", "summarize_memory"]
