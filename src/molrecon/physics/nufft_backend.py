"""The NUFFT library (torchkbnufft), imported once with TorchScript off.

torchkbnufft compiles its interpolation with ``torch.jit.script`` and spreads it over ``torch.jit.fork`` tasks.
Scripted forks run on torch's inter-op thread pool, and a process that used that pool aborts at exit now and
then ("terminate called without an active exception", exit code 134; measured 3 of 12 runs of a script that
applies ``NonCartesianMRI.A`` once, and reproduced with torch alone), which a command-line tool cannot have.
Imported with scripting off, the same functions are plain Python: ``torch.jit.fork`` then runs each task inline,
no inter-op thread starts, and the measured forward and adjoint times are unchanged (56 and 43 ms at 128²,
8 coils, 16384 samples, one thread), since the work is in tensor operations either way. Inline,
``torch.jit.fork`` warns that it is deprecated at every call (hundreds per NUFFT); :func:`quiet` silences exactly
that warning around the library's calls.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType

import torch


def torchkbnufft() -> ModuleType:
    """The ``torchkbnufft`` module, imported without TorchScript when this is its first import."""
    if "torchkbnufft" not in sys.modules:
        with quiet():
            _import_unscripted()
    return sys.modules["torchkbnufft"]


def _import_unscripted() -> None:
    state = getattr(torch.jit, "_state", None)
    if state is None or not (hasattr(state, "disable") and hasattr(state, "enable")):
        import torchkbnufft  # noqa: F401

        return
    was_enabled = bool(getattr(state, "_enabled", True))
    state.disable()
    try:
        import torchkbnufft  # noqa: F401
    finally:
        if was_enabled:
            state.enable()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torch's deprecation warnings for ``torch.jit.fork`` / ``wait`` / ``script`` inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.(fork|wait|script)` is deprecated",
                                category=DeprecationWarning)
        yield
