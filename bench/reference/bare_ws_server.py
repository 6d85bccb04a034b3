"""The minimal bare loop: the least an aiohttp server can do to receive a Media Stream sealed.

``python bench/reference/bare_ws_server.py --port P`` listens on 127.0.0.1 and prints
``ready <port>`` once it accepts connections. ``GET /ws`` is a websocket on which every text
message gets only this: ``json.loads``, base64-decode the media payload into the connection's
buffer, and once the buffer holds a second of two-track audio (16,000 bytes of 8 kHz mu-law),
seal it with AES-256-GCM (a random 32-byte key per connection, STREAM-style nonce ``prefix ‖
counter ‖ last-flag``) and drop the ciphertext. Nothing else: no validation, no per-frame
timing, no sequence checks, no consent logic, no file. A ``stop`` message seals the last chunk
and closes the socket, as the service does. This is the reference issue 14 names: what the
service does beyond it (checking, timing and framing each frame, writing and syncing, the call
itself) is what ``make bench-calls`` measures.

``GET /cpu`` answers ``{"cpu_seconds": user+sys of this process}``; ``GET /stats`` answers the
connections, frames received, chunks and bytes sealed. ``bench/calls.py`` (``make bench-calls``)
runs it as a subprocess, sends it the same streaming load as the real service, and compares
their CPU per call-minute.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import contextlib
import ctypes
import gc
import json
import os
import resource
import signal
import sys
from collections.abc import Callable, Sequence

from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEAL_BYTES = 2 * 8000  # one second of two tracks of 8 kHz mu-law
# Runtime settings are the same on both sides, so that the ratio compares the work done per
# message: the collector's thresholds ``ivr serve`` sets (ivr/service.py GC_THRESHOLDS) and what
# it reads from a socket at once (ivr/serving.py READ_BYTES), and at most two malloc arenas.
GC_THRESHOLDS = (10_000, 50, 100)
READ_BYTES = 64 * 1024
_STATS = web.AppKey("stats", dict)


def limit_malloc_arenas() -> None:
    """glibc's malloc arenas capped at two, as ``ivr serve`` does (ivr/serving.py
    ``limit_malloc_arenas``); nothing where the C library is not glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``ivr serve --loop`` runs on, for the same on both sides."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Sealer:
    """One connection's buffer and key."""

    __slots__ = ("aead", "buf", "counter", "prefix", "sealed_bytes")

    def __init__(self) -> None:
        self.aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self.prefix = os.urandom(7)
        self.counter = 0
        self.buf = bytearray()
        self.sealed_bytes = 0

    def seal(self, final: bool) -> None:
        nonce = self.prefix + self.counter.to_bytes(4, "big") + (b"\x01" if final else b"\x00")
        self.sealed_bytes += len(self.aead.encrypt(nonce, bytes(self.buf), None))
        self.buf.clear()
        self.counter += 1


async def stream(request: web.Request) -> web.WebSocketResponse:
    stats = request.app[_STATS]
    ws = web.WebSocketResponse(max_msg_size=64 * 1024, heartbeat=None)
    transport = request.transport
    if transport is not None and hasattr(transport, "max_size"):
        transport.max_size = READ_BYTES  # type: ignore[attr-defined]
    await ws.prepare(request)
    stats["connections"] += 1
    stats["open"] += 1
    sealer = _Sealer()
    loads, a2b = json.loads, binascii.a2b_base64
    buf = sealer.buf
    frames = 0
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            message = loads(msg.data)
            media = message.get("media")
            if media is None:
                if message.get("event") == "stop":
                    break
                continue
            buf += a2b(media["payload"])
            frames += 1
            if len(buf) >= SEAL_BYTES:
                sealer.seal(final=False)
    finally:
        sealer.seal(final=True)
        stats["frames"] += frames
        stats["chunks"] += sealer.counter
        stats["sealed_bytes"] += sealer.sealed_bytes
        stats["open"] -= 1
        if not ws.closed:
            await ws.close()
    return ws


async def cpu(request: web.Request) -> web.Response:
    return web.json_response({"cpu_seconds": round(cpu_seconds(), 4)})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(dict(request.app[_STATS]))


def create_app() -> web.Application:
    app = web.Application()
    app[_STATS] = {"connections": 0, "open": 0, "frames": 0, "chunks": 0, "sealed_bytes": 0}
    app.router.add_get("/ws", stream)
    app.router.add_get("/cpu", cpu)
    app.router.add_get("/stats", stats)
    return app


async def serve(port: int) -> None:
    runner = web.AppRunner(create_app(), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    print(f"ready {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/reference/bare_ws_server.py",
        description="Minimal bare aiohttp receive+decode+seal loop (load-test reference).",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()
    limit_malloc_arenas()
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        runner.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
