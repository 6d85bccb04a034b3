"""The bare RTP reference: the least an asyncio process can do to store RTP audio encrypted.

``python bench/reference/bare_rtp_server.py --ports LOW-HIGH`` binds one UDP socket on 127.0.0.1 per
port of the range (a port already in use is skipped), starts an HTTP server on a free loopback
port and prints ``ready <http-port> <sockets bound>`` once both listen.

Every datagram gets only the irreducible work of storing a call's RTP: the 12-byte fixed header
is parsed (``struct.unpack_from``), the payload appended to the socket's buffer, and about once
per second of audio (8000 timestamp ticks) the buffer is sealed with AES-256-GCM (a random
32-byte key per socket, STREAM-style nonce ``prefix ‖ counter ‖ last-flag``) and ``os.write``-n
to the socket's file. No address or SSRC checks, no reordering, no consent logic: what the
service does on top of this is what the load test measures. The sockets use the same event loop
machinery (``loop.create_datagram_endpoint``) and receive buffer (1 MiB) as the service's.

HTTP: ``GET /ports`` -> ``{"ports": [...]}``, the ports bound; ``GET /cpu`` ->
``{"cpu_seconds": user+sys of this process}``; ``GET /stats`` -> datagrams, payload bytes and
sealed chunks so far. SIGTERM/SIGINT seal every buffer (last chunk flagged) and exit.

``bench/calls.py --platform asterisk`` (``make bench-calls``) runs it as a subprocess for its
reference ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import resource
import signal
import socket
import struct
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEAL_TICKS = 8000  # one second of 8 kHz audio in RTP timestamp units
RCVBUF_BYTES = 1 << 20  # as the service's RTP sockets
_HEADER = struct.Struct("!BBHII")
_TS_MASK = 0xFFFFFFFF
_TS_HALF = 0x80000000
_STREAMS = web.AppKey("streams", list)


def parse_ports(text: str) -> tuple[int, int]:
    """``LOW-HIGH`` (or one port) -> (low, high); ValueError if it is not a valid range."""
    low_s, sep, high_s = text.partition("-")
    try:
        low = int(low_s)
        high = int(high_s) if sep else low
    except ValueError:
        raise ValueError(f"{text!r} is not a port range LOW-HIGH") from None
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{text!r} is not a port range within 1-65535")
    return low, high


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RtpSink(asyncio.DatagramProtocol):
    """One call's socket: its buffer, key and file (opened at the first datagram)."""

    def __init__(self, port: int, data_dir: Path) -> None:
        self.port = port
        self.path = data_dir / f"rtp-{port}.bin"
        self.transport: asyncio.DatagramTransport | None = None
        self.aead: AESGCM | None = None
        self.prefix = b""
        self.counter = 0
        self.buf = bytearray()
        self.seal_at = 0
        self.fd = -1
        self.frames = 0
        self.payload_bytes = 0
        self.chunks = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12:
            return
        _b0, _b1, _seq, ts, _ssrc = _HEADER.unpack_from(data)
        if self.fd < 0:
            self._open(ts)
        elif (ts - self.seal_at) & _TS_MASK < _TS_HALF:  # ts >= seal_at, modulo 2**32
            if self.buf:
                self.seal(final=False)
            self.seal_at = (ts + SEAL_TICKS) & _TS_MASK
        self.buf += data[12:]
        self.frames += 1

    def _open(self, ts: int) -> None:
        self.aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self.prefix = os.urandom(7)
        self.seal_at = (ts + SEAL_TICKS) & _TS_MASK
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def seal(self, final: bool) -> None:
        assert self.aead is not None
        nonce = self.prefix + self.counter.to_bytes(4, "big") + (b"\x01" if final else b"\x00")
        sealed = self.aead.encrypt(nonce, bytes(self.buf), None)
        self.payload_bytes += len(self.buf)
        self.buf.clear()
        self.counter += 1
        self.chunks += 1
        os.write(self.fd, len(sealed).to_bytes(4, "big") + sealed)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.fd >= 0:
            self.seal(final=True)
            os.close(self.fd)
            self.fd = -1


async def bind_range(low: int, high: int, data_dir: Path, host: str = "127.0.0.1") -> list[RtpSink]:
    """One socket per free port of ``low``-``high``; ports already in use are skipped."""
    loop = asyncio.get_running_loop()
    sinks: list[RtpSink] = []
    for port in range(low, high + 1):
        try:
            _, sink = await loop.create_datagram_endpoint(
                lambda p=port: RtpSink(p, data_dir), local_addr=(host, port)
            )
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        sinks.append(sink)
    return sinks


async def _ports(request: web.Request) -> web.Response:
    return web.json_response({"ports": [s.port for s in request.app[_STREAMS]]})


async def _cpu(request: web.Request) -> web.Response:
    return web.json_response({"cpu_seconds": round(cpu_seconds(), 4)})


async def _stats(request: web.Request) -> web.Response:
    sinks: list[RtpSink] = request.app[_STREAMS]
    return web.json_response(
        {
            "sockets": len(sinks),
            "streams": sum(1 for s in sinks if s.frames),
            "frames": sum(s.frames for s in sinks),
            "payload_bytes_sealed": sum(s.payload_bytes for s in sinks),
            "chunks": sum(s.chunks for s in sinks),
        }
    )


def create_app(sinks: list[RtpSink]) -> web.Application:
    app = web.Application()
    app[_STREAMS] = sinks
    app.router.add_get("/ports", _ports)
    app.router.add_get("/cpu", _cpu)
    app.router.add_get("/stats", _stats)
    return app


async def serve(low: int, high: int, data_dir: Path, http_port: int = 0) -> int:
    sinks = await bind_range(low, high, data_dir)
    if not sinks:
        print(f"no port of {low}-{high} could be bound", file=sys.stderr, flush=True)
        return 1
    runner = web.AppRunner(create_app(sinks), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", http_port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else http_port
        print(f"ready {bound} {len(sinks)}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        for sink in sinks:
            sink.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/reference/bare_rtp_server.py",
        description="Bare asyncio RTP receive+seal loop, one UDP socket per call (load-test "
        "reference for the Asterisk adapter).",
    )
    parser.add_argument(
        "--ports", required=True, help="UDP ports LOW-HIGH on 127.0.0.1, one per call"
    )
    parser.add_argument("--http-port", type=int, default=0, help="HTTP port (0: any free)")
    parser.add_argument("--data-dir", help="where to write the sealed files (default: a temp dir)")
    args = parser.parse_args(argv)
    try:
        low, high = parse_ports(args.ports)
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.ExitStack() as stack:
        if args.data_dir:
            data_dir = Path(args.data_dir)
            data_dir.mkdir(parents=True, exist_ok=True)
        else:
            data_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="ivr-bare-rtp-"))
            )
        return asyncio.run(serve(low, high, data_dir, args.http_port))


if __name__ == "__main__":
    sys.exit(main())
