"""Background loops run their vault work through ``ivr.supervision.in_thread``: a loop cancelled
at shutdown waits for the thread it started, so nothing is written after the shutdown's audit
head is published or while the vault closes (a sweep that was still running under CPU load
once added an audit entry after the head, and ``ivr audit verify`` named the wrong entry)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ivr.supervision import in_thread


async def test_a_cancelled_call_waits_for_its_thread_to_finish():
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def work() -> None:
        started.set()
        release.wait(30)
        finished.append("done")

    task = asyncio.ensure_future(in_thread(work))
    await asyncio.to_thread(started.wait, 30)
    task.cancel()
    for _ in range(20):  # plain to_thread would let the task end within a loop turn or two
        await asyncio.sleep(0)
    assert not task.done(), "the cancellation did not wait for the thread"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == ["done"]


async def test_the_result_and_errors_come_through():
    assert await in_thread(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(ZeroDivisionError):
        await in_thread(lambda: 1 / 0)
