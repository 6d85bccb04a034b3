"""Background loops that heal themselves, and say honestly how they are.

The service runs a few loops beside the requests: the ARI events loop, the retention sweeper
(with the breach watch and the key schedule), the call expiry. Each runs under ``supervise``:

- an unexpected error is logged once as one line, with its traceback the first time that kind
  of error is seen in that loop; every failure is counted;
- the loop is started again after a backoff (0.5 s doubling to 60 s), reset once a run has
  lasted ``HEALTHY_AFTER_SECONDS``;
- a loop that returns although it should run for ever counts as a failure too.

A loop that survives its own errors (the sweeper: one failed round, then the next one) reports
each round through ``LoopHealth.round_failed`` / ``round_ok``, so ``/healthz`` sees a failing
round (the catalog unreadable, the disk full) even though the loop never stops.

``LoopHealth.problem`` is the one rule for health: a loop is a problem while it is waiting to
restart, after ``FAILING_AFTER`` failures in a row, or while its last round failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")

BACKOFF_START, BACKOFF_MAX = 0.5, 60.0
HEALTHY_AFTER_SECONDS = 60.0  # a run this long resets the backoff and the failures in a row
FAILING_AFTER = 3  # failures in a row that make a loop "failing" even while it runs again

RUNNING, RESTARTING, STOPPED = "running", "restarting", "stopped"


@dataclass
class LoopHealth:
    """One background loop's state, as ``/healthz`` shows it."""

    name: str
    state: str = STOPPED
    failures: int = 0  # unexpected errors, ever
    in_a_row: int = 0  # failures since the last healthy run or round
    restarts: int = 0
    last_error: str | None = None  # "RecursionError: maximum recursion depth exceeded"
    round_error: str | None = None  # the last round failed with this (loops that survive)
    running_since: float | None = None  # wall time of the current run's start
    wall: Callable[[], float] = time.monotonic
    _seen: set[str] = field(default_factory=set)  # kinds of error whose traceback was logged

    @property
    def problem(self) -> str | None:
        """Why this loop is not healthy, in words; None when it is."""
        if self.state == RESTARTING:
            return f"{self.name} restarting after {self.last_error}"
        recent = self.running_since is None or (
            self.wall() - self.running_since < HEALTHY_AFTER_SECONDS
        )
        if self.in_a_row >= FAILING_AFTER and recent:
            return f"{self.name} failed {self.in_a_row} times in a row: {self.last_error}"
        if self.round_error is not None:
            return f"{self.name}: {self.round_error}"
        return None

    def report(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "failures": self.failures,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "ok": self.problem is None,
        }

    def failed(self, exc: BaseException, what: str | None = None) -> None:
        """Count an unexpected error and log it: one line, the traceback the first time."""
        self.failures += 1
        self.in_a_row += 1
        where = f"{self.name} ({what})" if what else self.name
        self.last_error = describe(exc)
        kind = f"{what}:{type(exc).__qualname__}"
        if kind in self._seen:
            log.error("%s failed again (%d in a row): %s", where, self.in_a_row, self.last_error)
        else:
            self._seen.add(kind)
            log.error("%s failed: %s", where, self.last_error, exc_info=exc)

    def round_failed(self, exc: BaseException, what: str) -> None:
        """One round of a loop that carries on failed (the loop itself did not stop)."""
        self.failed(exc, what)
        self.round_error = f"{what} failed: {self.last_error}"

    def round_ok(self) -> None:
        self.round_error = None
        self.in_a_row = 0


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


async def supervise(
    health: LoopHealth,
    run: Callable[[], Awaitable[None]],
    *,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    backoff_start: float = BACKOFF_START,
    backoff_max: float = BACKOFF_MAX,
) -> None:
    """Run ``run()`` for ever: restart it with backoff whenever it fails or returns.
    Cancelling this task stops the loop (that is not a failure)."""
    backoff = backoff_start
    while True:
        health.state = RUNNING
        started = health.running_since = health.wall()
        try:
            await run()
        except asyncio.CancelledError:
            health.state, health.running_since = STOPPED, None
            raise
        except Exception as exc:
            health.failed(exc)
        else:
            health.failed(RuntimeError("the loop returned"))
        health.running_since = None
        if health.wall() - started >= HEALTHY_AFTER_SECONDS:
            backoff = backoff_start
            health.in_a_row = 1
        health.state = RESTARTING
        log.warning("%s: restarting in %.1f s", health.name, backoff)
        try:
            await sleep(backoff)
        except asyncio.CancelledError:
            health.state = STOPPED
            raise
        backoff = min(backoff * 2, backoff_max)
        health.restarts += 1


async def in_thread(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``asyncio.to_thread`` for background loops: when the loop is cancelled (the service
    stops), the cancellation waits for the thread's work to end, since a thread cannot be
    stopped and would otherwise go on writing (a retention sweep's audit entry, a kept write)
    after the audit head was published at shutdown, or into a vault being closed."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise
