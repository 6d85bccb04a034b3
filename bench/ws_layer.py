"""What aiohttp's websocket reading costs per message when each message arrives on its own,
against a parser that hands each frame on in the same callback.

A Twilio stream's media messages arrive 20 ms apart per track, so the service is usually woken
for one message at a time. aiohttp then parses the frame into its queue, resolves the future the
stream's task waits on, and the loop resumes that task through its chain of coroutines (the
handler under aiohttp's and our middlewares; six deep here) to ``ws.receive()``. A reader that
parsed frames where the bytes arrive and called the stream's code directly would do none of the
queueing and waking. This puts a number on that difference before anyone builds such a reader.

Each way is fed the same text frame (a Twilio media message, masked as the load generator's
are: ``ivr.harness.wsclient.text_frame``) ``--messages`` times, one frame per turn of the event
loop (a ``call_soon`` chain), and timed in CPU seconds:

- ``feeding``: the ``call_soon`` chain alone, handing the frame's bytes to a counter;
- ``aiohttp``: aiohttp's ``WebSocketReader`` and ``WebSocketDataQueue`` (what
  ``web.WebSocketResponse`` plugs into the connection), read by a task six coroutines deep;
- ``direct``: a minimal parser, in Python, for masked unfragmented text frames: unmask (with
  aiohttp's own helper) and call a function per frame. It is no websocket implementation (no
  control frames, fragments, limits or checks), so it is a lower bound on what a real one
  would cost, not an estimate of it.

Each figure is the way's per-message CPU less the feeding loop's, min / median / max over
``--rounds``, ways alternating. One process, no sockets: it measures the layer, not the kernel.

Run from the repository root: ``.venv/bin/python bench/ws_layer.py [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp._websocket.helpers import websocket_mask
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader

from ivr.harness.wsclient import text_frame

# A media message as Twilio sends it: 20 ms of one track.
MESSAGE = (
    '{"event":"media","sequenceNumber":"1234","media":{"track":"inbound","chunk":"1233",'
    '"timestamp":"24660","payload":"' + "A" * 216 + '"},"streamSid":"MZ' + "a" * 32 + '"}'
).encode()
CHAIN_DEPTH = 6  # coroutines between the task and the read, as in the service's stream handler
MAX_MESSAGE = 1 << 16


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def take(self, _data: object) -> None:
        self.count += 1


class _Protocol:
    """What aiohttp's queue calls to pause and resume reading from the socket (never here)."""

    _reading_paused = False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class DirectReader:
    """Masked, unfragmented text frames with a payload under 64 KiB, each decoded and handed to
    ``on_text`` as soon as it is whole."""

    def __init__(self, on_text: Callable[[str], None]) -> None:
        self._rest = b""
        self._on_text = on_text

    def feed_data(self, data: bytes) -> None:
        buf = self._rest + data if self._rest else data
        pos, end = 0, len(buf)
        while end - pos >= 2:
            n, at = buf[pos + 1] & 0x7F, pos + 2
            if n == 126:
                if end - at < 2:
                    break
                n, at = int.from_bytes(buf[at : at + 2], "big"), at + 2
            if end - at < 4 + n:
                break
            payload = bytearray(buf[at + 4 : at + 4 + n])
            websocket_mask(buf[at : at + 4], payload)
            self._on_text(payload.decode())
            pos = at + 4 + n
        self._rest = buf[pos:]


async def _fed(frame: bytes, messages: int, feed: Callable[[bytes], None]) -> float:
    """CPU seconds for ``messages`` turns of the loop, each giving ``frame`` to ``feed``."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = messages

    def turn() -> None:
        nonlocal left
        feed(frame)
        left -= 1
        if left:
            loop.call_soon(turn)
        else:
            done.set_result(None)

    start = time.process_time()
    loop.call_soon(turn)
    await done
    return time.process_time() - start


async def feeding(frame: bytes, messages: int) -> float:
    return await _fed(frame, messages, Counter().take)


async def through_aiohttp(frame: bytes, messages: int) -> float:
    loop = asyncio.get_running_loop()
    queue = WebSocketDataQueue(_Protocol(), MAX_MESSAGE, loop=loop)  # type: ignore[arg-type]
    reader = WebSocketReader(queue, MAX_MESSAGE, False, True)
    counter = Counter()

    async def chain(depth: int) -> None:
        if depth:
            return await chain(depth - 1)
        while counter.count < messages:
            counter.take((await queue.read()).data)

    task = asyncio.ensure_future(chain(CHAIN_DEPTH))
    await asyncio.sleep(0)  # the task now waits on the queue, as a stream does
    start = time.process_time()
    await _fed(frame, messages, reader.feed_data)
    await task  # the last message's wake-up
    return time.process_time() - start


async def direct(frame: bytes, messages: int) -> float:
    counter = Counter()
    spent = await _fed(frame, messages, DirectReader(counter.take).feed_data)
    if counter.count != messages:
        raise RuntimeError(f"direct reader: {counter.count} of {messages} frames")
    return spent


WAYS: dict[str, Callable[[bytes, int], Awaitable[float]]] = {
    "feeding": feeding,
    "aiohttp": through_aiohttp,
    "direct": direct,
}


async def measure(rounds: int, messages: int) -> dict[str, Any]:
    frame = text_frame(MESSAGE)
    per_message: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(rounds):
        for way, run in WAYS.items():
            per_message[way].append(await run(frame, messages) / messages * 1e6)
    feed = per_message["feeding"]
    result: dict[str, Any] = {"rounds": rounds, "messages": messages, "frame_bytes": len(frame)}
    for way, times in per_message.items():
        # Each round's figure less the same round's feeding loop (not for the loop itself).
        net = times if way == "feeding" else [t - f for t, f in zip(times, feed, strict=True)]
        result[way] = {
            "min_us": round(min(net), 3),
            "median_us": round(statistics.median(net), 3),
            "max_us": round(max(net), 3),
        }
    result["saved_us"] = round(result["aiohttp"]["median_us"] - result["direct"]["median_us"], 3)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/ws_layer.py",
        description="CPU per websocket message through aiohttp's reader, queue and task "
        "wake-up, against a parser calling a function per frame, one message per loop turn.",
    )
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    p.add_argument("--messages", type=int, default=100_000, help="per way per round")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--json", action="store_true", help="one JSON object")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.messages < 1:
        p.error("--messages must be at least 1")
    if args.loop == "uvloop":
        import uvloop

        result = uvloop.run(measure(args.rounds, args.messages))
    else:
        result = asyncio.run(measure(args.rounds, args.messages))
    result["loop"] = args.loop
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"per message, {args.loop}, min / median / max over {args.rounds} rounds:")
    for way in WAYS:
        d = result[way]
        label = "feeding loop" if way == "feeding" else f"{way} (less the feeding loop)"
        print(f"  {label:32} {d['min_us']:.2f} / {d['median_us']:.2f} / {d['max_us']:.2f} µs")
    print(f"  saved by the direct reader       {result['saved_us']:.2f} µs (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
