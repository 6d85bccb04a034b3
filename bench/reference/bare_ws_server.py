"""The bare reference: the least an aiohttp server can do to store a Media Stream encrypted.

``python bench/reference/bare_ws_server.py --port P`` listens on 127.0.0.1 and prints
``ready <port>`` once it accepts connections. ``GET /ws`` is a websocket on which every text
message gets only the irreducible work of storing Twilio media: ``json.loads``, base64-decode
the payload, append it (tagged with its track and timestamp, as any two-track container must)
to a per-connection buffer, and once per second of audio seal the buffer with AES-256-GCM (a
random 32-byte key per connection, STREAM-style nonce ``prefix ‖ counter ‖ last-flag``) and
``os.write`` it to a file in a temporary directory. No validation, no sequence checks, no
consent logic. A ``stop`` message seals the last chunk and closes the socket, as the service
does.

``GET /cpu`` answers ``{"cpu_seconds": user+sys of this process}``; ``GET /stats`` answers the
frames received. ``bench/calls.py`` (``make bench-calls``) runs it as a subprocess, sends it
the same streaming load as the real service, and compares their CPU per call-minute.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import contextlib
import json
import os
import resource
import signal
import struct
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEAL_INTERVAL_MS = 1000
_FRAME_HEAD = struct.Struct(">BIH")  # track, timestamp ms, length
_STATS = web.AppKey("stats", dict)
_DIR = web.AppKey("dir", Path)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Sealer:
    """One connection's buffer, key and file."""

    __slots__ = ("aead", "buf", "counter", "fd", "prefix", "seal_at")

    def __init__(self, path: Path) -> None:
        self.aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self.prefix = os.urandom(7)
        self.counter = 0
        self.buf = bytearray()
        self.seal_at = -1
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def seal(self, final: bool) -> None:
        nonce = self.prefix + self.counter.to_bytes(4, "big") + (b"\x01" if final else b"\x00")
        sealed = self.aead.encrypt(nonce, bytes(self.buf), None)
        self.buf.clear()
        self.counter += 1
        os.write(self.fd, len(sealed).to_bytes(4, "big") + sealed)

    def close(self) -> None:
        if self.fd >= 0:
            self.seal(final=True)
            os.close(self.fd)
            self.fd = -1


async def stream(request: web.Request) -> web.WebSocketResponse:
    stats = request.app[_STATS]
    ws = web.WebSocketResponse(max_msg_size=64 * 1024, heartbeat=None)
    await ws.prepare(request)
    stats["connections"] += 1
    stats["open"] += 1
    sealer = _Sealer(request.app[_DIR] / f"conn-{stats['connections']}.bin")
    loads, a2b, pack = json.loads, binascii.a2b_base64, _FRAME_HEAD.pack
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
            audio = a2b(media["payload"])
            timestamp = int(media["timestamp"])
            buf = sealer.buf
            if timestamp >= sealer.seal_at:
                if buf:
                    sealer.seal(final=False)
                sealer.seal_at = timestamp + SEAL_INTERVAL_MS
            buf += pack(media["track"] == "outbound", timestamp, len(audio))
            buf += audio
            frames += 1
    finally:
        stats["frames"] += frames
        stats["open"] -= 1
        sealer.close()
        if not ws.closed:
            await ws.close()
    return ws


async def cpu(request: web.Request) -> web.Response:
    return web.json_response({"cpu_seconds": round(cpu_seconds(), 4)})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(dict(request.app[_STATS]))


def create_app(data_dir: Path) -> web.Application:
    app = web.Application()
    app[_STATS] = {"connections": 0, "open": 0, "frames": 0}
    app[_DIR] = data_dir
    app.router.add_get("/ws", stream)
    app.router.add_get("/cpu", cpu)
    app.router.add_get("/stats", stats)
    return app


async def serve(port: int, data_dir: Path) -> None:
    runner = web.AppRunner(create_app(data_dir), handle_signals=False, access_log=None)
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
        description="Bare aiohttp receive+decode+seal loop (load-test reference).",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--data-dir", help="where to write the sealed files (default: a temp dir)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.data_dir:
            data_dir = Path(args.data_dir)
            data_dir.mkdir(parents=True, exist_ok=True)
        else:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ivr-bare-")))
        asyncio.run(serve(args.port, data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
