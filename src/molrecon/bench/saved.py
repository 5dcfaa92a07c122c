"""Exact memory of a training step's graph: the bytes autograd keeps for backward.

Peak RSS and even ``cuda.max_memory_allocated`` depend on the allocator, on other processes and on transient
buffers; the tensors autograd *saves* for backward do not. :class:`SavedTensorMeter` counts them with
:func:`torch.autograd.graph.saved_tensors_hooks`: every packed tensor is recorded by its storage (several saved
views of one buffer count once), and a saved tensor stops counting when the graph that holds it is freed (e.g.
the ascent steps of the MOL-LR Lipschitz estimate, whose graphs die inside the forward). So

* :attr:`SavedTensorMeter.live_bytes` — bytes of the storages that the graph still holds *now* (read it after
  forward + loss, before ``backward``: this is ``saved_mib`` of the memory benchmark);
* :attr:`SavedTensorMeter.peak_bytes` — the most that was held at any moment while the meter was active;
* :meth:`SavedTensorMeter.breakdown` — the live bytes grouped by the ``grad_fn`` that saved them (which
  operations keep what), for finding what to cut.

Saved parameters count too (they are a few MiB at most and the same for every iteration count).

Example
-------
>>> import torch
>>> w = torch.randn(256, 256, requires_grad=True)
>>> with SavedTensorMeter() as meter:
...     loss = (w * w).sum()                       # mul saves its inputs: one 256 KiB storage, counted once
>>> meter.live_bytes
262144
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch


class _Handle:
    """What the graph stores in place of a saved tensor; its death means the graph released the tensor."""

    __slots__ = ("tensor", "key", "meter", "__weakref__")

    def __init__(self, tensor: torch.Tensor, key: tuple, meter: SavedTensorMeter) -> None:
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMeter:
    """Context manager counting the storages autograd saves for backward (see the module docstring)."""

    def __init__(self) -> None:
        self._refs: Counter = Counter()   # storage key -> live handles
        self._bytes: dict[tuple, int] = {}
        self._origin: dict[tuple, str] = {}
        self.live_bytes = 0
        self.peak_bytes = 0
        self.packed = 0
        self._ctx: Any = None

    @staticmethod
    def _key(t: torch.Tensor) -> tuple[tuple, int]:
        st = t.untyped_storage()
        try:
            ptr = st.data_ptr()
        except RuntimeError:  # a tensor without storage (forward-mode AD's zero tangents) holds no memory
            return ("no storage", id(t)), 0
        return (t.device.type, t.device.index, ptr), int(st.nbytes())

    def _pack(self, t: torch.Tensor) -> _Handle:
        key, nbytes = self._key(t)
        if self._refs[key] == 0:
            self._bytes[key] = nbytes
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            fn = t.grad_fn
            self._origin[key] = type(fn).__name__ if fn is not None else ("leaf" if t.requires_grad else "input")
        self._refs[key] += 1
        self.packed += 1
        # a detached alias (same storage, no grad_fn): holding the tensor itself would, for saved outputs, form
        # a cycle tensor -> grad_fn -> handle -> tensor that keeps freed graphs alive until a gc pass
        return _Handle(t.detach(), key, self)

    @staticmethod
    def _unpack(h: _Handle) -> torch.Tensor:
        return h.tensor

    def _release(self, key: tuple) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            self.live_bytes -= self._bytes.pop(key)
            self._origin.pop(key, None)
            del self._refs[key]

    def breakdown(self) -> dict[str, int]:
        """Live saved bytes per kind of producer of the saved tensor (``grad_fn`` class name)."""
        out: Counter = Counter()
        for key, nbytes in self._bytes.items():
            out[self._origin.get(key, "?")] += nbytes
        return dict(out.most_common())

    def __enter__(self) -> SavedTensorMeter:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)
        self._ctx = None


__all__ = ["SavedTensorMeter"]
