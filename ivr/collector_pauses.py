"""How long the garbage collector stopped the process: every collection timed.

The per-message path makes only short-lived objects, and ``ivr serve`` raises the collector's
thresholds (``ivr/service.py`` GC_THRESHOLDS) so that it seldom runs. When it does run, it
stops the event loop for as long as it takes to walk the objects made since it last ran: every
call's media and every prompt frame waits behind it. That pause, more than the CPU it takes, is
what a caller can notice (a first prompt frame late), so it is measured, not guessed:
``gc.callbacks`` says when each collection starts and stops. ``/healthz`` shows the totals
(``collector``), ``/metrics`` the histogram ``ivr_gc_pause_seconds``, and ``make bench-calls``
the pauses during each run (docs/healthz.md, docs/operations.md).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# Upper bounds of the histogram's buckets, in seconds: from a young generation's sweep to a
# pause a caller would hear as a late prompt.
PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


@dataclass
class CollectorPauses:
    """The pauses of one process's collector since it was watched (``watch``)."""

    clock: Callable[[], float] = time.perf_counter
    collections: list[int] = field(default_factory=lambda: [0, 0, 0])  # by generation
    paused_seconds: float = 0.0
    longest_seconds: float = 0.0
    # How many pauses took at most each of PAUSE_BUCKETS (cumulative, as Prometheus counts).
    at_most: list[int] = field(default_factory=lambda: [0] * len(PAUSE_BUCKETS))
    _started: float | None = None

    def callback(self, phase: str, info: Mapping[str, int]) -> None:
        """``gc.callbacks``' signature: ``phase`` is "start" or "stop"."""
        if phase == "start":
            self._started = self.clock()
            return
        started, self._started = self._started, None
        if started is None:  # watched from inside a collection: its start was not seen
            return
        pause = self.clock() - started
        generation = info.get("generation", 0)
        if 0 <= generation < len(self.collections):
            self.collections[generation] += 1
        self.paused_seconds += pause
        self.longest_seconds = max(self.longest_seconds, pause)
        for i, bound in enumerate(PAUSE_BUCKETS):
            if pause <= bound:
                self.at_most[i] += 1

    @property
    def count(self) -> int:
        return sum(self.collections)

    def report(self) -> dict[str, object]:
        """What ``/healthz`` shows under ``collector``."""
        over = {
            f"{bound * 1000:g}": self.count - n
            for bound, n in zip(PAUSE_BUCKETS, self.at_most, strict=True)
        }
        return {
            "watched": self.callback in gc.callbacks,  # False: not timed (zeros mean nothing)
            "collections": list(self.collections),
            "paused_seconds": round(self.paused_seconds, 6),
            "longest_pause_ms": round(self.longest_seconds * 1000, 3),
            "pauses_over_ms": over,
            "thresholds": list(gc.get_threshold()),
        }


PAUSES = CollectorPauses()  # this process's: there is one collector per process


def watch(pauses: CollectorPauses = PAUSES) -> None:
    """Time every collection from now on into ``pauses`` (once, however often called)."""
    if pauses.callback not in gc.callbacks:
        gc.callbacks.append(pauses.callback)


def unwatch(pauses: CollectorPauses = PAUSES) -> None:
    if pauses.callback in gc.callbacks:
        gc.callbacks.remove(pauses.callback)
