"""What ``ws.receive()`` costs for a message aiohttp has already read, against its queue's own read.

A Twilio stream is read one ``await ws.receive()`` per message (ivr/platforms/twilio/app.py
``_serve_stream``). When a read from the socket brings several messages (Twilio, like the load
generator, sends a call's two tracks together), the later ones are already parsed and queued by
the time they are asked for, and ``receive()`` only wraps the queue's ``read()`` in its checks.
Taking them from the queue directly (``ws._reader``, which has no public API) would save that
wrapper and nothing else. This measures how much, so that the README's claim about it is a
command: an aiohttp server on loopback, a client that sends its messages in bursts of 100, and the
server timing only the reads that find a message waiting, through ``ws.receive()`` on one
connection and through the queue on the other, alternating over ``--rounds``.

Run from the repository root: ``.venv/bin/python bench/ws_receive.py [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence

import aiohttp
from aiohttp import web

# A media message as Twilio sends it: 20 ms of one track.
MESSAGE = (
    '{"event":"media","sequenceNumber":"1234","media":{"track":"inbound","chunk":"1233",'
    '"timestamp":"24660","payload":"' + "A" * 216 + '"},"streamSid":"MZ' + "a" * 32 + '"}'
)
BURST = 100
_TIMES = web.AppKey("times", dict)


async def _receiver(request: web.Request) -> web.WebSocketResponse:
    """Read ``count`` messages; sum the time of the reads that found one waiting."""
    ws = web.WebSocketResponse(max_msg_size=1 << 16, autoping=False)
    await ws.prepare(request)
    way, count = request.query["way"], int(request.query["count"])
    queue = ws._reader  # aiohttp's own; read only by this measurement
    assert queue is not None
    spent, timed = 0.0, 0
    for _ in range(count):
        if not queue._buffer:  # nothing waiting: the read would wait for the socket
            await ws.receive()
            continue
        start = time.perf_counter()
        if way == "queue":
            await queue.read()
        else:
            await ws.receive()
        spent += time.perf_counter() - start
        timed += 1
    request.app[_TIMES][way] = (spent, timed)
    await ws.close()
    return ws


async def measure(rounds: int, count: int, progress: bool) -> dict[str, list[float]]:
    app = web.Application()
    app[_TIMES] = {}
    app.router.add_get("/ws", _receiver)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    per_read: dict[str, list[float]] = {"receive": [], "queue": []}
    try:
        async with aiohttp.ClientSession() as session:
            for n in range(rounds):
                ways = ("receive", "queue") if n % 2 == 0 else ("queue", "receive")
                for way in ways:
                    url = f"http://127.0.0.1:{port}/ws?way={way}&count={count}"
                    async with session.ws_connect(url) as ws:
                        for _ in range(count // BURST):
                            for _ in range(BURST):
                                await ws.send_str(MESSAGE)
                            await asyncio.sleep(0)  # let the burst go out together
                        await ws.receive()  # the server's close: it has read them all
                    spent, timed = app[_TIMES][way]
                    per_read[way].append(spent / timed * 1e6)
                if progress:
                    print(f"ws_receive: round {n + 1}/{rounds}", file=sys.stderr)
    finally:
        await runner.cleanup()
    return per_read


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/ws_receive.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--messages", type=int, default=20_000, help="per connection and round")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.messages < BURST:
        parser.error(f"--rounds must be at least 1 and --messages at least {BURST}")
    per_read = asyncio.run(measure(args.rounds, args.messages, progress=not args.json))
    result = {
        way: {"median_us": statistics.median(v), "min_us": min(v), "max_us": max(v)}
        for way, v in per_read.items()
    }
    saved = result["receive"]["median_us"] - result["queue"]["median_us"]
    if args.json:
        print(json.dumps({**result, "saved_us": saved}))
    else:
        for way, r in result.items():
            print(
                f"{way:8s} {r['median_us']:.3f} us per message already read "
                f"(min {r['min_us']:.3f}, max {r['max_us']:.3f})"
            )
        print(f"saved    {saved:.3f} us per message already read, by taking it from the queue")
    return 0


if __name__ == "__main__":
    sys.exit(main())
