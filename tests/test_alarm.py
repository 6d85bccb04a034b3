"""ivr.calls.alarm: one timer per waiting task, moved only when its deadline comes earlier.

Every test orders events by the loop's timers (which run in the order they are due) and by
futures it resolves itself, never by how long something took.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from ivr.calls.alarm import Alarm


def ready(value: str) -> Callable[[], Awaitable[str]]:
    """A receive whose message is already there."""

    async def receive() -> str:
        return value

    return receive


def never() -> Callable[[], Awaitable[str]]:
    """A receive that waits for a message that never comes."""
    return lambda: asyncio.get_running_loop().create_future()


def count_timers(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The deadlines the running loop is asked to call back at."""
    loop = asyncio.get_running_loop()
    asked: list[float] = []
    call_at = loop.call_at

    def counting(when: float, callback, *args, **kw):  # type: ignore[no-untyped-def]
        asked.append(when)
        return call_at(when, callback, *args, **kw)

    monkeypatch.setattr(loop, "call_at", counting)
    return asked


async def test_a_deadline_that_moves_later_keeps_one_timer(monkeypatch) -> None:
    asked = count_timers(monkeypatch)
    alarm = Alarm()
    for n in range(100):  # a message every wait, each deadline later than the last
        assert await alarm.wait(ready(f"m{n}"), 5.0 + n) == f"m{n}"
    assert len(asked) == 1
    # Earlier than the timer: moved.
    assert await alarm.wait(ready("sooner"), 1.0) == "sooner"
    assert len(asked) == 2 and asked[1] < asked[0]
    alarm.close()


async def test_no_message_in_time_is_a_timeout_and_leaves_the_task_uncancelled() -> None:
    alarm = Alarm()
    with pytest.raises(TimeoutError):
        await alarm.wait(never(), 0.01)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    assert await alarm.wait(ready("after"), 0.01) == "after"  # and it goes on
    alarm.close()


async def test_a_deadline_already_due_raises_at_once_without_receiving() -> None:
    alarm = Alarm()
    called = []

    async def receive() -> str:
        called.append(1)
        return "x"

    for delay in (0.0, -0.5):
        with pytest.raises(TimeoutError):
            await alarm.wait(receive, delay)
    assert called == []
    alarm.close()


async def test_a_timer_that_rings_before_a_later_deadline_does_not_time_out() -> None:
    alarm = Alarm()
    assert await alarm.wait(ready("first"), 0.01) == "first"  # timer at +0.01
    message: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def deliver() -> None:
        # Due after the old timer: it has rung (and set itself for the new deadline) by now.
        await asyncio.sleep(0.05)
        message.set_result("later")

    delivery = asyncio.ensure_future(deliver())
    assert await alarm.wait(lambda: message, 30.0) == "later"
    await delivery
    alarm.close()


async def test_ringing_while_the_task_is_busy_elsewhere_cancels_nothing() -> None:
    alarm = Alarm()
    assert await alarm.wait(ready("m"), 0.01) == "m"
    await asyncio.sleep(0.05)  # the deadline passes here: this sleep must not be cut short
    assert await alarm.wait(ready("next"), None) == "next"
    alarm.close()


async def test_a_cancel_from_outside_is_not_taken_for_a_timeout() -> None:
    started = asyncio.Event()

    async def waiter() -> str:
        alarm = Alarm()

        async def receive() -> str:
            started.set()
            return await asyncio.get_running_loop().create_future()

        try:
            return await alarm.wait(receive, 30.0)
        finally:
            alarm.close()

    task = asyncio.ensure_future(waiter())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_close_takes_the_timer_off_the_loop() -> None:
    alarm = Alarm()
    assert await alarm.wait(ready("m"), 30.0) == "m"
    handle = alarm._handle
    assert handle is not None
    alarm.close()
    assert handle.cancelled() and alarm._handle is None


def test_an_alarm_belongs_to_a_task() -> None:
    async def in_a_callback() -> None:
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[BaseException] = loop.create_future()

        def make() -> None:
            try:
                Alarm()
            except RuntimeError as exc:
                failed.set_result(exc)

        loop.call_soon(make)
        assert "task" in str(await failed)

    asyncio.run(in_a_callback())
