"""Alarm: a deadline for a task that waits many times a second and is nearly always woken by
what it waits for before the deadline comes.

A Twilio stream waits for its next message with a deadline while a prompt plays or the flow's
timer is near: that is every message of the consent phase, fifty a second per track. Around
each wait, ``asyncio.timeout`` puts a timer on the loop and takes it off again, with its own
bookkeeping: about 5 µs a wait on uvloop, where the wait itself costs about 1.5, against under
1 for an Alarm, whichever way its deadline moves (``bench/alarm.py``, three runs).

An Alarm keeps one timer and leaves it where it is while the deadline moves later, which is
what a deadline recomputed after every message does; when the timer comes before the deadline
it sets itself again for it. It is moved only when the deadline comes earlier. If the deadline
passes while the task waits, the task is cancelled and ``wait`` raises ``TimeoutError``, as
``asyncio.timeout`` does: the cancellation is told apart from anyone else's by the task's
cancellation count (``Task.uncancel``). If it passes while the task is busy elsewhere, nothing
is cancelled: the next ``wait`` is asked for a deadline already due and raises at once.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Alarm:
    __slots__ = ("_deadline", "_expired", "_handle", "_handle_at", "_loop", "_task", "_waiting")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("an Alarm belongs to a task")
        self._task = task
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = math.inf  # when the timer fires, on the loop's clock
        self._deadline = math.inf  # when the task wants to be woken, on the loop's clock
        self._waiting = False  # awaiting in ``wait``: the only time the alarm may cancel
        self._expired = False  # cancelled the task, which ``wait`` has not yet seen

    async def wait(self, receive: Callable[[], Awaitable[T]], delay: float | None) -> T:
        """``await receive()``, or TimeoutError once ``delay`` seconds have passed; None for no
        deadline. A deadline already due (``delay`` of zero or less) raises at once, without
        calling ``receive``."""
        if delay is None:
            self._deadline = math.inf
        else:
            if delay <= 0:
                raise TimeoutError
            deadline = self._deadline = self._loop.time() + delay
            if deadline < self._handle_at:
                if self._handle is not None:
                    self._handle.cancel()
                self._handle = self._loop.call_at(deadline, self._ring)
                self._handle_at = deadline
        cancelling = self._task.cancelling()
        self._waiting = True
        try:
            result = await receive()
        except asyncio.CancelledError:
            if self._expired:
                self._expired = False
                if self._task.uncancel() <= cancelling:  # ours alone: not a cancel from outside
                    raise TimeoutError from None
            raise
        finally:
            self._waiting = False
        if self._expired:  # rang as ``receive`` returned, and ``receive`` kept the cancel
            self._expired = False
            self._task.uncancel()
        return result

    def close(self) -> None:
        """Take the timer off the loop (the task is done waiting for good)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._handle_at = self._deadline = math.inf

    def _ring(self) -> None:
        self._handle, self._handle_at = None, math.inf
        deadline = self._deadline
        if deadline == math.inf:
            return  # no deadline now; the next ``wait`` with one sets the timer again
        if self._loop.time() < deadline:  # the deadline moved later since the timer was set
            self._handle = self._loop.call_at(deadline, self._ring)
            self._handle_at = deadline
        elif self._waiting and not self._expired:
            self._expired = True
            self._task.cancel()
        # Due while the task is busy elsewhere: the next ``wait`` asks again.
