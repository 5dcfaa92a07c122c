"""Named timing regions: a public hook through which a benchmark sees where a reconstruction spends its time.

Models mark their parts with :func:`region` (``with region("cnn"): ...``). Outside :func:`timing` a region is
a shared no-op context (no clock is read), so inference pays nothing for it. Inside ``with timing(timer):`` the
active :class:`ExclusiveTimer` charges the wall time to the innermost open region (a stack), so the totals add
up to the measured time with the unmarked rest left over; an ``absorb=True`` region swallows the regions opened
inside it (e.g. the CNN applications of a Jacobian power iteration are charged to the bound, not to ``cnn``).

The active timer lives in a :class:`contextvars.ContextVar`, so it is per thread and per task, and no model
or solver object is modified to time it.

Example
-------
>>> timer = ExclusiveTimer()
>>> with timing(timer):
...     with region("outer", absorb=True):
...         with region("inner"):
...             pass
>>> sorted(timer.calls), "inner" in timer.totals
(['outer'], False)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

_ACTIVE: ContextVar[ExclusiveTimer | None] = ContextVar("molrecon_timer", default=None)
_NOOP = contextlib.nullcontext()


class ExclusiveTimer:
    """Wall-clock time charged to the innermost open region; ``sync`` (e.g. ``torch.cuda.synchronize``) runs
    before every clock reading so that asynchronous device work is charged where it was issued."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[tuple[str, bool]] = []
        self._sync = sync or (lambda: None)
        self._last = time.perf_counter()

    def start(self) -> float:
        """Synchronise and restart the clock (time before this is charged to no region); returns the time."""
        self._sync()
        self._last = time.perf_counter()
        return self._last

    def _charge(self) -> None:
        self._sync()
        now = time.perf_counter()
        if self._stack:
            label = self._stack[-1][0]
            self.totals[label] = self.totals.get(label, 0.0) + (now - self._last)
        self._last = now

    @contextlib.contextmanager
    def region(self, label: str, absorb: bool = False) -> Iterator[None]:
        """Charge the time inside to ``label`` (unless an enclosing region absorbs it)."""
        if self._stack and self._stack[-1][1]:
            yield
            return
        self._charge()
        self._stack.append((label, absorb))
        self.calls[label] = self.calls.get(label, 0) + 1
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()


def region(label: str, absorb: bool = False) -> contextlib.AbstractContextManager:
    """A timing region of the active timer, or a no-op when none is active (see the module docstring)."""
    timer = _ACTIVE.get()
    return _NOOP if timer is None else timer.region(label, absorb)


@contextlib.contextmanager
def timing(timer: ExclusiveTimer) -> Iterator[ExclusiveTimer]:
    """Make ``timer`` the active one for the regions opened inside this block."""
    token = _ACTIVE.set(timer)
    try:
        yield timer
    finally:
        _ACTIVE.reset(token)
