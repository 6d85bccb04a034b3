"""What a deadline costs a wait whose message is already there: ``asyncio.timeout`` against
``ivr.calls.alarm.Alarm``.

A Twilio stream waits for each message with a deadline while a prompt plays or the flow's timer
is near (ivr/platforms/twilio/app.py). This times such waits on the event loop ``ivr serve``
runs on, each for a message already there: with no deadline (the floor), inside
``asyncio.timeout``, through an Alarm whose deadline moves later at each wait (a stream in real
time: the deadline stays put or is recomputed a little later), and through one whose deadline
comes a little earlier at each wait (media running ahead of the wall clock, as in the load
test's consent phase), so that the timer is moved every time. Each wait goes once round the
event loop, as a real one does. Nanoseconds per wait, the median of ``--rounds`` rounds, each
way in turn.

Run from the repository root: ``.venv/bin/python bench/alarm.py [--loop asyncio] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence

from ivr.calls.alarm import Alarm
from ivr.serving import loop_factory

WAYS = ("no deadline", "asyncio.timeout", "alarm, deadline later", "alarm, deadline earlier")


async def _message() -> int:
    """A message already there, as ``ws.receive()`` finds one: the task still goes once round
    the event loop (where a timer set and cancelled is cleared away) before it has it."""
    await asyncio.sleep(0)
    return 1


async def _time(way: str, waits: int) -> float:
    """Nanoseconds per wait, ``way``."""
    alarm = Alarm()
    start = time.perf_counter()
    if way == "no deadline":
        for _ in range(waits):
            await _message()
    elif way == "asyncio.timeout":
        for _ in range(waits):
            async with asyncio.timeout(0.5):
                await _message()
    elif way == "alarm, deadline later":
        for _ in range(waits):
            await alarm.wait(_message, 0.5)
    else:
        for n in range(waits):
            await alarm.wait(_message, 0.5 - n * 1e-6)
    spent = time.perf_counter() - start
    alarm.close()
    return spent / waits * 1e9


async def measure(rounds: int, waits: int, progress: bool) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for n in range(rounds):
        for way in WAYS:
            times[way].append(await _time(way, waits))
        if progress:
            print(f"alarm: round {n + 1}/{rounds}", file=sys.stderr)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/alarm.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--waits", type=int, default=100_000, help="per way and round")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.waits < 1:
        parser.error("--rounds and --waits must be at least 1")
    try:
        _, factory = loop_factory(args.loop)  # as ``ivr serve --loop`` makes it
    except ValueError as exc:
        parser.error(f"--loop {args.loop}: {exc}")
    with asyncio.Runner(loop_factory=factory) as runner:
        times = runner.run(measure(args.rounds, args.waits, progress=not args.json))
    result = {
        way: {"median_ns": statistics.median(v), "min_ns": min(v), "max_ns": max(v)}
        for way, v in times.items()
    }
    if args.json:
        print(json.dumps({"loop": args.loop, "ways": result}))
    else:
        print(f"event loop {args.loop}; ns per wait for a message already there")
        for way, r in result.items():
            print(f"{way:24s} {r['median_ns']:7.0f} (min {r['min_ns']:.0f}, max {r['max_ns']:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
