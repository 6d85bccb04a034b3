"""The harness's one websocket client (RFC 6455) on asyncio streams: Twilio's side of a Media
Stream, for the simulator and the load test alike.

aiohttp's client builds, masks and writes every message on its own, which at tens of thousands
of messages per second makes the load generator the bottleneck. This client does only what
Twilio's side needs:

* the HTTP/1.1 upgrade over ws:// or wss:// (``Sec-WebSocket-Key`` sent, the ``101`` and
  ``Sec-WebSocket-Accept`` checked), with extra headers (the signature Twilio puts there);
* text frames, client-masked with the all-zero mask key, which RFC 6455 §5.3 permits (the key
  must be unpredictable to stop a browser script poisoning proxy caches, which does not apply to
  a test tool) and which makes masking a no-op, so a frame is header ‖ payload;
* ``write_raw``: many pre-built frames in one ``transport.write``;
* ``ping``: the harness's handshake in virtual time. A server reads a ping in order with the
  messages before it and answers when it gets to it, so the pong says it has read (and, for our
  service, reacted to) everything sent before the ping (see ``ivr.harness.twilio_wire.sync``);
* reading frames (fragmented messages, ping, pong and close included).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
import struct
from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PONG",
    "OP_TEXT",
    "RawWebSocket",
    "WebSocketError",
    "close_frame",
    "frame_header",
    "text_frame",
]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_ZERO_MASK = b"\x00\x00\x00\x00"
_MAX_MESSAGE = 16 * 1024 * 1024
_MAX_HANDSHAKE = 64 * 1024


class WebSocketError(Exception):
    """The handshake failed (``status``: the HTTP status, if any) or the peer broke the
    protocol."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _make_header(fin_opcode: int, length: int) -> bytes:
    if length < 126:
        return bytes((fin_opcode, 0x80 | length)) + _ZERO_MASK
    if length < 65536:
        return bytes((fin_opcode, 0x80 | 126)) + struct.pack(">H", length) + _ZERO_MASK
    return bytes((fin_opcode, 0x80 | 127)) + struct.pack(">Q", length) + _ZERO_MASK


# Headers of text frames up to 4 KiB, precomputed: building a media frame is then one lookup.
_TEXT_HEADERS = tuple(_make_header(0x80 | OP_TEXT, n) for n in range(4096))


def frame_header(length: int) -> bytes:
    """The header of a final, zero-masked text frame carrying ``length`` bytes."""
    if length < 4096:
        return _TEXT_HEADERS[length]
    return _make_header(0x80 | OP_TEXT, length)


def text_frame(payload: bytes | str) -> bytes:
    """One complete client text frame (zero mask: the payload goes out as is)."""
    if isinstance(payload, str):
        payload = payload.encode()
    return frame_header(len(payload)) + payload


def close_frame(code: int = 1000, reason: bytes = b"") -> bytes:
    body = struct.pack(">H", code) + reason[:123]
    return _make_header(0x80 | OP_CLOSE, len(body)) + body


class RawWebSocket:
    """One client connection. ``receive`` must not be called from two tasks at once."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.transport = writer.transport
        self.close_code: int | None = None  # the peer's close code, once it sent one
        self.close_reason = ""
        self._close_sent = False
        self.closed = False

    # -- connecting ------------------------------------------------------------------------
    @classmethod
    async def connect(
        cls, url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 10.0
    ) -> RawWebSocket:
        """Open ``ws(s)://host:port/path`` and complete the upgrade.

        Raises ``WebSocketError`` (``status`` set when the server answered something other
        than 101), ``OSError`` or ``TimeoutError``."""
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise WebSocketError(f"only ws:// and wss:// URLs are supported, not {url!r}")
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rpartition("@")[2]
        key = base64.b64encode(os.urandom(16))
        extra = {"User-Agent": "ivr-harness", **(headers or {})}
        request = (
            f"GET {path} HTTP/1.1\r\n"
            f"Host: {host_header}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in extra.items())
            + "\r\n"
        ).encode()
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                parts.hostname,
                port,
                limit=_MAX_HANDSHAKE,
                ssl=ssl.create_default_context() if secure else None,
            )
            try:
                writer.write(request)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                    raise WebSocketError(f"{url}: no complete HTTP response ({exc})") from None
                status_line, answer = _parse_head(head)
                fields = status_line.split(" ", 2)
                if len(fields) < 2 or fields[1] != "101":
                    body = b""
                    length = answer.get("content-length", "")
                    if length.isdigit() and int(length) <= _MAX_HANDSHAKE:
                        body = await reader.readexactly(int(length))
                    text = body.decode(errors="replace").strip()[:200]
                    raise WebSocketError(
                        f"{url}: upgrade refused: {status_line}" + (f": {text}" if text else ""),
                        status=int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0,
                    )
                expected = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
                if answer.get("sec-websocket-accept") != expected:
                    raise WebSocketError(f"{url}: bad Sec-WebSocket-Accept")
                if answer.get("upgrade", "").lower() != "websocket":
                    raise WebSocketError(f"{url}: response is not a websocket upgrade")
            except BaseException:
                writer.close()
                raise
        return cls(reader, writer)

    # -- sending ---------------------------------------------------------------------------
    def send_text(self, payload: bytes | str) -> None:
        """Queue one text message (written at once if the socket takes it)."""
        self.write_raw(text_frame(payload))

    def write_raw(self, frames: bytes) -> None:
        """Write pre-built frames (e.g. many ``text_frame``s joined) in one ``write``."""
        if self._close_sent or self.transport.is_closing():
            raise ConnectionResetError("websocket is closed")
        self.transport.write(frames)

    def ping(self, payload: bytes) -> None:
        """Send a ping; its pong comes back from ``receive`` as ``(OP_PONG, payload)``."""
        if self._close_sent or self.transport.is_closing():
            raise ConnectionResetError("websocket is closed")
        self.transport.write(_make_header(0x80 | OP_PING, len(payload)) + payload)

    @property
    def writable(self) -> bool:
        return not self._close_sent and not self.transport.is_closing()

    @property
    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self.transport.get_write_buffer_size()

    async def drain(self) -> None:
        await self._writer.drain()

    # -- receiving -------------------------------------------------------------------------
    async def receive(self) -> tuple[int, bytes]:
        """The next message as (opcode, payload): OP_TEXT, OP_BINARY, OP_PONG or OP_CLOSE.

        Pings are answered. On OP_CLOSE the payload is the close body; the
        close is answered and the connection shut, after which every call returns OP_CLOSE.
        Raises ``asyncio.IncompleteReadError``/``ConnectionError`` if the connection drops.
        """
        if self.closed:
            return OP_CLOSE, b""
        reader = self._reader
        message_op: int | None = None
        parts: list[bytes] = []
        size = 0
        while True:
            b0, b1 = await reader.readexactly(2)
            fin, opcode = b0 & 0x80, b0 & 0x0F
            length = b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack(">H", await reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", await reader.readexactly(8))
            if b1 & 0x80:
                mask = await reader.readexactly(4)
                data = _unmask(await reader.readexactly(length), mask)
            else:
                data = await reader.readexactly(length) if length else b""
            if opcode >= 0x8:  # control frames may arrive between fragments
                if opcode == OP_CLOSE:
                    return OP_CLOSE, self._closed_by_peer(data)
                if opcode == OP_PONG:
                    return OP_PONG, data
                if opcode == OP_PING and self.writable:
                    self.transport.write(_make_header(0x80 | OP_PONG, len(data)) + data)
                continue
            if opcode == OP_CONT:
                if message_op is None:
                    raise WebSocketError("continuation frame without a message")
            elif message_op is not None:
                raise WebSocketError("new message before the last one ended")
            else:
                message_op = opcode
            size += len(data)
            if size > _MAX_MESSAGE:
                raise WebSocketError("message too large")
            parts.append(data)
            if fin:
                return message_op, parts[0] if len(parts) == 1 else b"".join(parts)

    def _closed_by_peer(self, body: bytes) -> bytes:
        if len(body) >= 2:
            (self.close_code,) = struct.unpack(">H", body[:2])
            self.close_reason = body[2:].decode(errors="replace")
        else:
            self.close_code = 1005  # no status received
        if not self._close_sent and not self.transport.is_closing():
            self.transport.write(close_frame(self.close_code if len(body) >= 2 else 1000))
            self._close_sent = True
        self._shutdown()
        return body

    # -- closing ---------------------------------------------------------------------------
    async def close(self, code: int = 1000, reason: bytes = b"", *, timeout: float = 5.0) -> None:
        """Send a close frame, wait (bounded) for the peer's, then shut the connection."""
        if self.closed:
            return
        try:
            if not self._close_sent and not self.transport.is_closing():
                self.transport.write(close_frame(code, reason))
                self._close_sent = True
            async with asyncio.timeout(timeout):
                while True:
                    op, _ = await self.receive()
                    if op == OP_CLOSE:
                        break
        except (TimeoutError, OSError, asyncio.IncompleteReadError, WebSocketError):
            pass
        finally:
            self._shutdown()

    def abort(self) -> None:
        """Drop the connection without a closing handshake."""
        self._close_sent = True
        self.closed = True
        self.transport.abort()

    def _shutdown(self) -> None:
        self.closed = True
        if not self.transport.is_closing():
            self._writer.close()


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _unmask(data: bytes, mask: bytes) -> bytes:
    if mask == _ZERO_MASK:
        return data
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")
