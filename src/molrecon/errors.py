"""Errors that the CLI reports as one clear line (never a traceback from deep inside torch)."""

from __future__ import annotations


class MolreconError(ValueError):
    """Base class for user-facing errors: bad input, bad files, non-convergence under ``strict``."""


class InputError(MolreconError):
    """An input tensor or file has the wrong shape, dtype, keys or values (NaN/Inf, empty mask...)."""


class ConvergenceError(MolreconError):
    """An iterative solver did not reach its tolerance and the caller asked for ``strict`` behaviour."""


class CheckpointError(MolreconError):
    """A checkpoint or weight file is missing, corrupted, or unsafe to load."""
