"""A simulated Twilio voice platform: places one call against a running service.

It speaks only what Twilio would speak (signed form webhooks, TwiML, Media Streams websockets,
the status callback) and never imports the service, so it can drive any deployment. The wire
format is ``ivr.harness.twilio_wire``'s, shared with the load test.

Time. The call clock starts at 0 when the voice webhook is sent. Every stream carries one
20 ms frame per track per 20 ms of call time; frame ``n`` of a stream has timestamp ``n * 20``
(ms since the stream's ``start``) and is sent once the 20 ms it covers are over, i.e. at call
time ``stream start + (n + 1) * 20 ms``. Key presses, the hang-up, mark echoes (when the queued
prompt audio before the mark has played at 8000 bytes/s) and verb durations are all scheduled
on the same clock, and when several things fall on the same instant frames go first. One
driver loop sends everything, so every stream sees events in call-time order.

A ``Pacer`` maps the call clock to the wall clock. ``RealTimePacer`` follows the event loop's
clock (due times are computed from the stream start, so lateness never accumulates) and what
the service sends is applied as it arrives. ``VirtualPacer`` (fast mode) jumps straight to the
next due time and *syncs* with the service (``twilio_wire.Inbox.sync``) after the ``start``,
after each key and mark echo and after every ``sync_frames`` frames, applying what the service
sent only then, at the call time of the sync: no waiting for quiet, so a fast call goes the same
way however slow the machine is. Webhook round trips take no call time in fast mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp
from yarl import URL

from ivr.harness import audio as harness_audio
from ivr.harness import twilio_wire as wire
from ivr.harness.twilio_wire import BYTES_PER_SECOND, DEMO_AUTH_TOKEN, Inbox
from ivr.harness.twilio_wire import DEFAULT_FROM as DEFAULT_FROM  # re-exported: asterisk_sim
from ivr.harness.twilio_wire import DEFAULT_TO as DEFAULT_TO
from ivr.harness.wsclient import OP_BINARY, RawWebSocket, WebSocketError
from media.dtmf import DIGITS
from media.wavfile import UnsupportedAudio

log = logging.getLogger(__name__)

FRAME_SECONDS = 0.02
_EPS = 1e-6  # call-time instants closer than this (seconds) are the same instant
_MAX_WEBHOOKS = 50  # voice + redirects + actions: more is a redirect loop
_WS_CLOSE_TIMEOUT_S = 5.0
_REFUSAL_CODES = frozenset({1008}) | frozenset(range(4000, 5000))
_T = TypeVar("_T")
_CALLER_TONE = harness_audio.tone(440.0, -12.0)  # CallOptions.audio None
_AGENT_TONE = harness_audio.tone(330.0, -12.0)
_SILENCE = harness_audio.silence()


# -- results --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TranscriptEntry:
    t: float  # call time, seconds
    text: str


class _Reported:
    """A ``CallResult`` field of the service's status answer (the property's name), as text."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = name

    def __get__(self, result: CallResult | None, owner: type) -> str | None:
        value = (result.status_response or {}).get(self.key) if result else None
        return None if value is None else str(value)


@dataclass
class CallResult:
    call_sid: str
    transcript: list[TranscriptEntry] = field(default_factory=list)
    prompt_ms_received: float = 0.0
    first_prompt_frame_latency_ms: float | None = None
    webhook_latency_ms: list[float] = field(default_factory=list)
    frames_sent: dict[str, int] = field(default_factory=dict)
    frames_after_key: int = 0  # frames sent on bidirectional streams after the first key
    marks_echoed: int = 0
    dtmf_sent: int = 0
    status_response: dict[str, Any] | None = None
    closed_by_server: list[int] = field(default_factory=list)
    twiml: list[str] = field(default_factory=list)
    error: str | None = None
    duration: float = 0.0  # call time at the end of the call, seconds
    audio_heard: bytearray = field(default_factory=bytearray)  # with keep_audio: μ-law played

    decision = _Reported()
    recording_id = _Reported()
    lawful_basis = _Reported()
    recording_status = _Reported()

    def to_json(self) -> dict[str, Any]:
        return {
            "call_sid": self.call_sid,
            "decision": self.decision,
            "recording_id": self.recording_id,
            "lawful_basis": self.lawful_basis,
            "recording_status": self.recording_status,
            "prompt_ms": self.prompt_ms_received,
            "transcript": [{"t": e.t, "text": e.text} for e in self.transcript],
            "error": self.error,
        }


@dataclass(frozen=True)
class CallOptions:
    url: str
    to: str = DEFAULT_TO
    from_: str = DEFAULT_FROM
    auth_token: str = DEMO_AUTH_TOKEN
    presses: list[tuple[float, str]] = field(default_factory=list)  # (call time, digit)
    # (call time, what the agent does then): e.g. stop the recording through the admin API
    # because the caller asked them to; done while the agent is on the line (after <Dial>).
    agent_actions: list[tuple[float, Callable[[], Awaitable[object]]]] = field(default_factory=list)
    # Names of <Start><Stream>s Twilio fails to connect: nothing is streamed, and a stream with
    # a statusCallback gets a stream-error there (as Twilio reports an unreachable stream).
    broken_streams: frozenset[str] = frozenset()
    keep_audio: bool = False  # keep the prompt audio the service sends (CallResult.audio_heard)
    hangup_at: float | None = None
    duration: float = 5.0  # conversation after <Dial>, or the message left at <Record>
    audio: Path | None = None  # caller audio; None: a tone
    fast: bool = False
    max_call_seconds: float = 600.0
    http_timeout: float = 15.0  # per webhook, as Twilio's default; also per fast-mode sync
    wall_timeout: float | None = None  # whole call; None: 120 s fast, max_call_seconds + 60 real
    account_sid: str | None = None  # None: a random AC…
    call_sid: str | None = None  # None: a random CA…
    # Fast mode: sync with the service after every this many frames of a stream. 1 sees each
    # reaction to a deadline at the frame that reached it; the load test takes 25 (0.5 s).
    sync_frames: int = 1
    # Service processes or nodes behind one public URL (``url``): each webhook and each stream
    # goes to the next of them in turn, with the public URL's Host header, as a load balancer
    # would send them. Empty: everything to ``url`` itself.
    nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for t, digit in self.presses:
            if digit not in DIGITS:
                raise ValueError(f"key press digit must be one of 0-9 * # A-D, got {digit!r}")
            if not (math.isfinite(t) and t >= 0):
                raise ValueError(f"key press time must be a non-negative number, got {t!r}")
        for name in ("hangup_at", "duration", "max_call_seconds"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if self.sync_frames < 1:
            raise ValueError(f"sync_frames must be at least 1, got {self.sync_frames!r}")


@dataclass(frozen=True)
class StreamStart:
    """A ``<Start><Stream>`` handed to the caller of ``simulate_call`` (the load test streams
    the recording itself, in real time): where to connect, and what its ``start`` carries."""

    url: str
    params: dict[str, str]
    tracks: list[str]
    call_sid: str
    account_sid: str


# -- pacing ----------------------------------------------------------------------------------------
class RealTimePacer:
    """Call time follows the monotonic clock, the event loop's (or injected ``time_fn``/
    ``sleep_fn``)."""

    fast = False

    def __init__(
        self,
        time_fn: Callable[[], float] = time.monotonic,
        sleep_fn: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._time = time_fn
        self._sleep_fn = sleep_fn
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = self._time()

    def now(self) -> float:
        return self._time() - self._t0

    async def wait_until(self, t: float, wake: asyncio.Event) -> None:
        """Return at call time ``t``, or earlier once ``wake`` is set."""
        delay = t - self.now()
        if delay <= _EPS or wake.is_set():
            return
        waker = asyncio.ensure_future(wake.wait())
        sleeper = asyncio.ensure_future(self._sleep_fn(delay))
        try:
            await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waker, sleeper):
                task.cancel()


class VirtualPacer(RealTimePacer):
    """Fast mode: call time is virtual and jumps to whatever is due next (no waiting)."""

    fast = True

    def __init__(self) -> None:
        super().__init__(time_fn=lambda: self._clock)
        self._clock = 0.0

    async def wait_until(self, t: float, wake: asyncio.Event) -> None:
        self._clock = max(self._clock, self._t0 + t)
        await asyncio.sleep(0)  # let the stream readers run


Pacer = RealTimePacer  # maps the call clock onto the wall clock (VirtualPacer: fast mode)


# -- the call --------------------------------------------------------------------------------------
class _CallError(Exception):
    """Ends the call with ``CallResult.error`` set."""


@dataclass(kw_only=True, eq=False)
class _Stream:
    """One Media Streams websocket, as Twilio's side of it."""

    ws: RawWebSocket
    inbox: Inbox
    sid: str
    name: str | None
    tracks: list[str]
    bidirectional: bool
    start_t: float  # call time of `start`
    start_wall: float = field(default_factory=time.perf_counter)
    seq: int = 1  # `start` is sequence number 1
    frames: int = 0  # frames sent per track; frame n is chunk n + 1 of each track
    # Twilio's playback queue (bidirectional streams): when the prompt audio queued so far runs
    # out, and the marks queued behind it, each due once the audio before it has played.
    audio_end: float = 0.0
    marks: deque[tuple[float, str]] = field(default_factory=deque)  # (due call time, name)
    closed: bool = False
    closing_by_us: bool = False
    burst_bytes: int = 0  # prompt audio not yet reported in the transcript
    burst_t: float = 0.0
    warned: set[str] = field(default_factory=set)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def next_frame_time(self) -> float:
        return self.start_t + (self.frames + 1) * FRAME_SECONDS

    @property
    def label(self) -> str:
        return self.name or f"{self.sid[:8]}…"


@dataclass(eq=False)
class _Call:
    o: CallOptions
    session: aiohttp.ClientSession
    pacer: Pacer
    result: CallResult
    on_transcript: Callable[[TranscriptEntry], None] | None = None
    on_start_stream: Callable[[StreamStart], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        o = self.o
        self.caller = _CALLER_TONE
        self.base_url = o.url.rstrip("/")
        self.account_sid = o.account_sid or wire.new_sid("AC")
        self.params = wire.call_form(self.result.call_sid, self.account_sid, o.to, o.from_)
        self.streams: list[_Stream] = []
        self.presses: deque[tuple[float, str]] = deque(sorted(o.presses, key=lambda p: p[0]))
        self.agent_actions = deque(sorted(o.agent_actions, key=lambda a: a[0]))
        self.keyed = False  # a key has been delivered
        self.hung_up = False
        self.in_dial = False
        self.unreachable = False
        self.webhooks = 0
        self.routed = 0  # webhooks and streams sent to one of o.nodes so far
        self.over = False  # the call has ended: only its status callback is left
        self.wake = asyncio.Event()
        # What run_until does when something falls due, by rank: at one call-time instant the
        # lowest rank goes first, so frames go before mark echoes, key presses and the rest.
        self.on_due = (self._frames, self._marks, self._press, self._agent_acts, self._hang_up)

    # -- transcript ---------------------------------------------------------------------------
    def _append(self, t: float, text: str) -> None:
        entry = TranscriptEntry(round(t, 3), text)
        self.result.transcript.append(entry)
        if self.on_transcript is not None:
            self.on_transcript(entry)

    def _flush(self, s: _Stream) -> None:
        if s.burst_bytes:
            self._append(s.burst_t, f"← prompt audio {s.burst_bytes / BYTES_PER_SECOND:.2f} s")
            s.burst_bytes = 0

    def log(self, text: str) -> None:
        for s in self.streams:
            self._flush(s)
        self._append(self.pacer.now(), text)

    def warn_once(self, s: _Stream, key: str, text: str) -> None:
        if key not in s.warned:
            s.warned.add(key)
            self.log(text)

    def fail(self, message: str) -> None:
        if self.result.error is None:
            self.result.error = message
        self.log(f"error: {message}")

    # -- running --------------------------------------------------------------------------------
    async def run(self) -> None:
        self.pacer.start()
        try:
            if self.o.audio is not None:
                self.caller = harness_audio.from_file(self.o.audio)
        except (UnsupportedAudio, ValueError) as exc:
            self.fail(str(exc))  # before calling: no webhook at all
            return
        wall = self.o.wall_timeout
        if wall is None:
            wall = 120.0 if self.pacer.fast else self.o.max_call_seconds + 60.0
        try:
            async with asyncio.timeout(wall):
                where: tuple[str, str] | None = (f"{self.base_url}/twilio/voice", "POST")
                while where is not None:
                    where = await self._run_document(await self._fetch_twiml(*where), where[0])
        except _CallError as exc:
            self.fail(str(exc))
        except TimeoutError:
            self.fail(f"gave up after {wall:g} s of wall time")
        except Exception as exc:  # a harness bug must still end the call cleanly
            log.exception("simulated call failed")
            self.fail(f"harness error: {exc!r}")
        try:
            async with asyncio.timeout(self.o.http_timeout + 2 * _WS_CLOSE_TIMEOUT_S):
                for s in self.streams:
                    await self._stop_stream(s)
                for s in self.streams:
                    await self._reap(s)
                self.result.duration = self.pacer.now()
                self.log(f"call ended after {self.result.duration:.1f} s")
                self.over = True
                if not self.unreachable:
                    await self._status_callback()
        except TimeoutError:
            self.fail("timed out while ending the call")
        finally:
            for s in self.streams:
                s.inbox.cancel()

    # -- the clock-driven loop ----------------------------------------------------------------
    def _open_streams(self) -> list[_Stream]:
        return [s for s in self.streams if not s.closed]

    async def run_until(
        self, deadline: float | None = None, until: Callable[[], bool] | None = None
    ) -> None:
        """Send frames and handle timed events until ``deadline``, ``until()`` or a hang-up."""
        while not self.hung_up:
            if not self.pacer.fast:  # real time: apply what the service has sent so far
                for s in self._open_streams():
                    self._apply(s, s.inbox.take())
            if until is not None and until():
                return
            self.wake.clear()
            # (due call time, rank in self.on_due, stream); past the ranks: the deadline.
            end = self.o.max_call_seconds
            due: list[tuple[float, int, _Stream | None]] = [
                (end if self.o.hangup_at is None else min(end, self.o.hangup_at), 4, None)
            ]
            for s in self._open_streams():
                due.append((s.next_frame_time(), 0, s))
                if s.marks:
                    due.append((s.marks[0][0], 1, s))
            if self.presses:
                due.append((self.presses[0][0], 2, None))
            if self.agent_actions and self.in_dial:
                due.append((self.agent_actions[0][0], 3, None))
            if deadline is not None:
                due.append((deadline, len(self.on_due), None))
            t = min(at for at, _, _ in due)
            await self.pacer.wait_until(t, self.wake)
            if self.pacer.now() < t - _EPS:
                continue  # woken early: something changed, recompute
            due = [item for item in due if item[0] <= t + _EPS]
            rank = min(r for _, r, _ in due)
            if rank == len(self.on_due):
                return
            await self.on_due[rank]([s for _, r, s in due if r == rank and s is not None], t)

    async def await_io(self, aw: Awaitable[_T]) -> _T | None:
        """Await network I/O. In real time the call goes on meanwhile (streams keep sending);
        in fast mode it takes no call time. ``None`` if the caller hung up first. Once the
        call is over (the status callback), there is nothing to go on meanwhile: awaited."""
        if self.pacer.fast or self.over:
            return await aw
        task = asyncio.ensure_future(aw)
        task.add_done_callback(lambda _: self.wake.set())
        await self.run_until(until=task.done)
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            return None
        return task.result()

    async def _sync(self, *streams: _Stream) -> None:
        """Fast mode: let the service react before the call clock moves on; apply its answer."""
        if not self.pacer.fast:
            return
        for s in streams:
            if s.closed:
                continue
            try:
                messages = await s.inbox.sync(self.o.http_timeout)
            except TimeoutError:
                raise _CallError(
                    f"stream {s.label}: no pong within {self.o.http_timeout:g} s (fast mode needs "
                    "a server that answers websocket pings)"
                ) from None
            self._apply(s, messages)

    # -- what falls due (self.on_due) -------------------------------------------------------------
    async def _frames(self, streams: list[_Stream], t: float) -> None:
        for s in streams:
            n = s.frames
            s.frames += 1
            index = round((s.start_t + n * FRAME_SECONDS) / FRAME_SECONDS)  # call-time frame no.
            for track in s.tracks:
                source = _AGENT_TONE if self.in_dial else _SILENCE
                payload = (self.caller if track == "inbound" else source).payload(index)
                template = wire.media_template(s.sid, track)
                if not self._send(s, template % (s.next_seq(), n + 1, n * 20, payload.encode())):
                    break
                self.result.frames_sent[track] = self.result.frames_sent.get(track, 0) + 1
                if s.bidirectional and self.keyed:
                    self.result.frames_after_key += 1
        # A frame may bring a deadline: see the service's answer.
        await self._sync(*(s for s in streams if s.frames % self.o.sync_frames == 0))

    async def _marks(self, streams: list[_Stream], t: float) -> None:
        for s in streams:
            while s.marks and s.marks[0][0] <= t + _EPS:
                name = s.marks.popleft()[1]
                if self._send(s, wire.mark(s.next_seq(), s.sid, name)):
                    self.result.marks_echoed += 1
                    self.log(f"→ mark echoed {name}")
            await self._sync(s)

    async def _press(self, streams: list[_Stream], t: float) -> None:
        _, digit = self.presses.popleft()
        targets = [s for s in self._open_streams() if s.bidirectional]
        if not targets:
            self.log(f"→ pressed {digit} (no bidirectional stream: not delivered)")
            return
        self.log(f"→ pressed {digit}")
        self.keyed = True
        for s in targets:
            self._send(s, wire.dtmf(s.next_seq(), s.sid, digit))
        self.result.dtmf_sent += 1
        await self._sync(*targets)

    async def _agent_acts(self, streams: list[_Stream], t: float) -> None:
        _, action = self.agent_actions.popleft()
        self.log("→ agent acts for the caller")
        await action()
        await self._sync(*self.streams)

    async def _hang_up(self, streams: list[_Stream], t: float) -> None:
        self.hung_up = True
        if self.o.hangup_at is not None and self.o.hangup_at <= t + _EPS:
            self.log("→ caller hangs up")
        else:
            self.log(f"→ maximum call length ({self.o.max_call_seconds:g} s): hanging up")

    def _send(self, s: _Stream, message: bytes) -> bool:
        if s.closed:
            return False
        try:
            s.ws.send_text(message)
        except (ConnectionError, OSError, RuntimeError):
            return False  # the reader reports how it closed
        return True

    # -- receiving --------------------------------------------------------------------------------
    def _apply(self, s: _Stream, messages: list[tuple[int, bytes]]) -> None:
        """What the service sent, at the current call time; then whether it closed."""
        for op, data in messages:
            if op == OP_BINARY:
                self.warn_once(s, "binary", "server sent a binary frame (ignored)")
            else:
                self._on_message(s, wire.read_server_message(data, keep_audio=self.o.keep_audio))
        if s.inbox.closed and not s.inbox.messages and not s.closed:
            s.closed = True
            if s.closing_by_us:
                return
            code = 1006 if s.ws.close_code is None else s.ws.close_code  # 1006: link dropped
            self.result.closed_by_server.append(code)
            reason = f": {s.ws.close_reason}" if s.ws.close_reason else ""
            if code in _REFUSAL_CODES:
                self.log(f"server refused stream {s.label} ({code}{reason})")
            elif code == 1006:
                self.log(f"stream {s.label} connection lost (1006)")
            else:
                self.log(f"server closed stream ({code}{reason})")

    def _on_message(self, s: _Stream, message: wire.ServerMessage) -> None:
        event = message.event
        if message.problem is not None:
            self.warn_once(s, message.problem, f"server sent {message.problem} (ignored)")
            return
        if message.stream_sid != s.sid:
            self.warn_once(
                s, "sid", f"server sent {event!r} with a wrong or missing streamSid (ignored)"
            )
            return
        if not s.bidirectional and event in ("media", "mark", "clear"):
            self.warn_once(s, "uni", f"server sent {event!r} on a unidirectional stream (ignored)")
            return
        now = self.pacer.now()
        if event == "media":
            if self.result.first_prompt_frame_latency_ms is None:
                assert s.inbox.first_at is not None
                latency = (s.inbox.first_at - s.start_wall) * 1000
                self.result.first_prompt_frame_latency_ms = latency
            s.audio_end = max(s.audio_end, now) + message.audio_bytes / BYTES_PER_SECOND
            self.result.audio_heard += message.audio
            self.result.prompt_ms_received += message.audio_bytes * 1000 / BYTES_PER_SECOND
            if s.burst_bytes == 0:
                s.burst_t = now
            s.burst_bytes += message.audio_bytes
        elif event == "mark":
            s.marks.append((max(s.audio_end, now), message.name))
            self._flush(s)
        elif event == "clear":
            dropped = max(0.0, s.audio_end - now)
            s.audio_end = now
            s.marks = deque((now, name) for _, name in s.marks)  # all due at once
            self.log(f"← clear (dropped {dropped:.2f} s of queued audio)")
        else:
            self.warn_once(s, f"event:{event}", f"server sent unknown event {event!r} (ignored)")

    # -- streams --------------------------------------------------------------------------------
    def _stream_target(self, el: ET.Element) -> tuple[str, dict[str, str]]:
        """A ``<Stream>``'s URL as Twilio connects to it (no query string) and its parameters."""
        raw_url = (el.get("url") or "").strip()
        parts = urlsplit(raw_url)
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise _CallError(f"bad TwiML: <Stream url={raw_url!r}> is not a ws:// or wss:// URL")
        if parts.query:
            self.log(f"stream URL query string ?{parts.query} dropped (Twilio drops it)")
        params = {p.get("name", ""): p.get("value", "") for p in el.iter("Parameter")}
        params.pop("", None)
        return urlunsplit(parts._replace(query="", fragment="")), params

    async def _open_stream(
        self, el: ET.Element, *, bidirectional: bool, tracks: list[str]
    ) -> _Stream | None:
        url, custom = self._stream_target(el)
        headers = wire.signed_headers(self.o.auth_token, url, {})
        via = self._next_node()
        if via is not None:
            via = "ws" + via.removeprefix("http")  # http -> ws, https -> wss
        connect = RawWebSocket.connect(url, headers=headers, timeout=self.o.http_timeout, via=via)
        try:
            ws = await self.await_io(connect)
        except WebSocketError as exc:
            why = f"websocket handshake refused (HTTP {exc.status})" if exc.status else exc
            raise _CallError(f"stream {url}: {why}") from None
        except TimeoutError:
            why = f"no websocket handshake in {self.o.http_timeout:g} s"
            raise _CallError(f"stream {url}: {why}") from None
        except OSError as exc:
            raise _CallError(f"stream {url}: cannot connect ({exc})") from exc
        if ws is None:
            return None
        sid = wire.new_sid("MZ")
        s = _Stream(
            ws=ws,
            sid=sid,
            name=el.get("name"),
            tracks=tracks,
            bidirectional=bidirectional,
            start_t=self.pacer.now(),
            inbox=Inbox(ws, self.wake),
        )
        self.streams.append(s)
        self._send(s, wire.connected())
        self._send(s, wire.start(sid, self.result.call_sid, self.account_sid, tracks, custom))
        kind = "bidirectional" if bidirectional else "unidirectional"
        self.log(f"→ stream {s.label} started ({kind}, tracks {'+'.join(tracks)})")
        await self._sync(s)
        return s

    async def _stop_stream(self, s: _Stream) -> None:
        """Twilio's side ends the stream: ``stop``, then close."""
        if s.closed:
            return
        s.closing_by_us = True
        self._send(s, wire.stop(s.next_seq(), s.sid, self.result.call_sid, self.account_sid))
        s.closed = True
        s.inbox.cancel()  # ``close`` reads the socket itself
        with contextlib.suppress(Exception):
            await s.ws.close(timeout=_WS_CLOSE_TIMEOUT_S)
        self.log(f"→ stop sent on stream {s.label}")

    async def _reap(self, s: _Stream) -> None:
        """Wait for a stream's reader to have seen how the socket closed."""
        if not s.closing_by_us:
            await s.inbox.wait_closed(_WS_CLOSE_TIMEOUT_S)
            self._apply(s, s.inbox.take())

    # -- HTTP -----------------------------------------------------------------------------------
    async def _request(
        self, url: str, method: str, params: dict[str, str], what: str, *, quiet: bool = False
    ) -> tuple[int, str, str]:
        """A signed webhook request: (status, content type, body) of a 2xx answer, or else
        ``_CallError``."""
        self.webhooks += 1
        if self.webhooks > _MAX_WEBHOOKS:
            raise _CallError(f"more than {_MAX_WEBHOOKS} webhook requests: a redirect loop?")
        try:
            target = URL(url)
        except (TypeError, ValueError) as exc:
            raise _CallError(f"{what}: bad URL {url!r}") from exc
        if target.scheme not in ("http", "https") or not target.host:
            raise _CallError(f"{what}: not an http(s) URL: {url!r}")
        if method == "GET":
            target = target.update_query(params)
        data = params if method == "POST" else None  # what the signature covers, with the URL
        headers = wire.signed_headers(self.o.auth_token, str(target), data or {})
        send_to, via = target, self._next_node()
        if via is not None:
            node = URL(via)
            send_to = target.with_scheme(node.scheme).with_host(node.host or "")
            send_to = send_to.with_port(node.port)
            headers = {**headers, "Host": urlsplit(str(target)).netloc}

        async def go() -> tuple[int, str, str]:
            async with self.session.request(
                method,
                send_to,
                data=data,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.o.http_timeout),
            ) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), await resp.text()

        began = time.perf_counter()
        try:
            answer = await self.await_io(go())
        except TimeoutError as exc:
            raise _CallError(f"{what} {url}: no answer in {self.o.http_timeout:g} s") from exc
        except aiohttp.ClientConnectorError as exc:
            if self.webhooks == 1:
                self.unreachable = True
            raise _CallError(f"{what} {url}: cannot connect ({exc.os_error})") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _CallError(f"{what} {url}: {type(exc).__name__}: {exc}") from exc
        if answer is None:
            raise _CallError(f"{what} {url}: caller hung up before the answer")  # pragma: no cover
        status, _, body = answer
        latency = (time.perf_counter() - began) * 1000
        self.result.webhook_latency_ms.append(latency)
        if not quiet:
            self.log(f"→ {method} {target.path} → HTTP {status} ({latency:.0f} ms)")
        if not 200 <= status < 300:
            raise _CallError(f"{what} {url}: HTTP {status}: {_snippet(body)}")
        return answer

    def _next_node(self) -> str | None:
        """Where the next webhook or stream goes (``CallOptions.nodes``, round-robin)."""
        nodes = self.o.nodes
        if not nodes:
            return None
        self.routed += 1
        return nodes[(self.routed - 1) % len(nodes)]

    async def _fetch_twiml(self, url: str, method: str) -> ET.Element:
        what = "voice webhook" if self.webhooks == 0 else "TwiML request"
        _, content_type, body = await self._request(url, method, self.params, what)
        self.result.twiml.append(body)
        mime = content_type.split(";")[0].strip().lower()
        if mime not in ("text/xml", "application/xml", "text/html"):
            raise _CallError(f"{what} {url}: answered {mime or 'no content type'}, not TwiML")
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            raise _CallError(f"bad TwiML from {url}: {exc}") from exc
        if root.tag != "Response":
            raise _CallError(f"bad TwiML from {url}: root element <{root.tag}>, not <Response>")
        self.log("← TwiML: " + (" + ".join(_summary(el) for el in root) or "(empty)"))
        return root

    async def _stream_status(self, el: ET.Element, event: str, sid: str, error: str = "") -> None:
        """Post a ``<Stream statusCallback>`` event, when the TwiML asked for them; as Twilio's,
        its failure does not end the call."""
        url = (el.get("statusCallback") or "").strip()
        if not url:
            return
        params = {
            "AccountSid": self.account_sid,
            "CallSid": self.result.call_sid,
            "StreamSid": sid,
            "StreamName": el.get("name") or "",
            "StreamEvent": event,
            "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if error:
            params["StreamError"] = error
        try:
            status, _, _ = await self._request(url, "POST", params, "stream status callback")
            self.log(f"→ {event} callback: HTTP {status}")
        except _CallError as exc:
            self.fail(str(exc))

    async def _status_callback(self) -> None:
        params = dict(
            self.params,
            CallStatus="completed",
            CallDuration=str(int(self.result.duration + 0.5)),
        )
        url = f"{self.base_url}/twilio/status"
        self.webhooks = min(self.webhooks, _MAX_WEBHOOKS - 1)  # always allowed
        try:
            _, _, body = await self._request(url, "POST", params, "status callback", quiet=True)
        except _CallError as exc:
            self.fail(str(exc))
            return
        try:
            answer = json.loads(body) if body.strip() else {}
        except ValueError:
            answer = {"body": body}
        self.result.status_response = answer if isinstance(answer, dict) else {"value": answer}

    # -- TwiML ----------------------------------------------------------------------------------
    async def _run_document(self, root: ET.Element, doc_url: str) -> tuple[str, str] | None:
        """Run the verbs in order; returns where to fetch the next document, or None: call over."""
        for el in root:
            if self.hung_up:
                return None
            text = (el.text or "").strip()
            match el.tag:
                case "Say":
                    self.log(f'← Say "{text}"')
                case "Play":
                    self.log(f"← Play {text} (not played)")
                case "Pause":
                    length = _attr(el, "length", "1", _seconds)
                    self.log(f"← Pause {length:g} s")
                    await self.run_until(deadline=self.pacer.now() + length)
                case "Hangup" | "Reject":
                    self.log(f"← {el.tag}")
                    return None
                case "Connect":
                    action = await self._connect(el)
                    if action:
                        return urljoin(doc_url, action), _method(el)
                case "Start":
                    await self._start(el)
                case "Stop":
                    for stream_el in el.iter("Stream"):
                        name = stream_el.get("name")
                        mine = [s for s in self.streams if not s.bidirectional and s.name == name]
                        if not mine:
                            self.log(f"← Stop stream {name!r}: no such stream")
                        for s in mine:
                            await self._stop_stream(s)
                case "Dial":
                    self.log(
                        f"agent {_dial_number(el) or '?'} answers: talking {self.o.duration:g} s"
                    )
                    await self._talk(self.o.duration, "the conversation", in_dial=True)
                    return None
                case "Record":
                    length = min(self.o.duration, _attr(el, "maxLength", "3600", _seconds))
                    self.log(f"caller leaves a {length:g} s message")
                    await self._talk(length, "the message")
                    return None
                case "Redirect":
                    if not text:
                        raise _CallError("bad TwiML: <Redirect> without a URL")
                    return urljoin(doc_url, text), _method(el)
                case _:
                    self.log(f"← <{el.tag}> is not simulated (skipped)")
        return None

    async def _talk(self, seconds: float, what: str, *, in_dial: bool = False) -> None:
        """The caller talks for ``seconds`` of call time (to the agent: ``in_dial``), then hangs
        up (if not before)."""
        self.in_dial = in_dial
        try:
            await self.run_until(deadline=self.pacer.now() + seconds)
        finally:
            self.in_dial = False
        if not self.hung_up:
            self.log(f"→ caller hangs up after {what}")

    async def _connect(self, el: ET.Element) -> str:
        """``<Connect><Stream>`` until the stream ends; its ``action`` ("": go on, or over)."""
        stream_el = el.find("Stream")
        if stream_el is None:
            children = ", ".join(f"<{c.tag}>" for c in el) or "nothing"
            raise _CallError(f"<Connect> with {children}: only <Stream> is simulated")
        s = await self._open_stream(stream_el, bidirectional=True, tracks=["inbound"])
        if s is None:
            return ""
        await self.run_until(until=lambda: s.closed)
        if self.hung_up:
            return ""
        await self._reap(s)
        return (el.get("action") or "").strip()

    async def _start(self, el: ET.Element) -> None:
        stream_el = el.find("Stream")
        if stream_el is None:
            children = ", ".join(f"<{c.tag}>" for c in el) or "nothing"
            self.log(f"← <Start> with {children} is not simulated (skipped)")
            return
        tracks = _attr(stream_el, "track", "inbound_track", _TRACKS.__getitem__)
        name = stream_el.get("name") or ""
        if name in self.o.broken_streams:
            self.log(f"→ stream {name} cannot connect (simulated failure)")
            await self._stream_status(stream_el, "stream-error", "", "connection failed")
            return
        if self.on_start_stream is None:
            s = await self._open_stream(stream_el, bidirectional=False, tracks=tracks)
            if s is not None:
                await self._stream_status(stream_el, "stream-started", s.sid)
            return
        url, params = self._stream_target(stream_el)
        self.log(f"→ stream {url} handed over ({'+'.join(tracks)})")
        start = StreamStart(url, params, tracks, self.result.call_sid, self.account_sid)
        await self.await_io(self.on_start_stream(start))


# -- reading TwiML ------------------------------------------------------------------------------
_TRACKS = {
    "inbound_track": ["inbound"],
    "outbound_track": ["outbound"],
    "both_tracks": ["inbound", "outbound"],
}


def _attr(el: ET.Element, name: str, default: str, parse: Callable[[str], _T]) -> _T:
    """A verb's attribute (``default`` when absent or empty) through ``parse``; what ``parse``
    rejects (``ValueError``, ``KeyError``) is bad TwiML."""
    value = el.get(name) or default
    try:
        return parse(value)
    except (ValueError, KeyError):
        raise _CallError(f"bad TwiML: <{el.tag} {name}={value!r}>") from None


def _seconds(value: str) -> float:
    seconds = float(value)
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(value)
    return seconds


def _method(el: ET.Element) -> str:
    return _attr(el, "method", "POST", lambda m: {"GET": "GET", "POST": "POST"}[m.upper()])


def _summary(el: ET.Element) -> str:
    """One verb in the transcript's ``← TwiML:`` line."""
    text = (el.text or "").strip()
    inner = el.find("Stream")
    match el.tag:
        case "Say":
            return f'Say "{text[:40]}{"…" if len(text) > 40 else ""}"'
        case "Play" | "Redirect":
            return f"{el.tag} {text}"
        case "Pause":
            return f"Pause {el.get('length', '1')}s"
        case "Connect" if inner is not None:
            return f"Connect/Stream {inner.get('url', '?')}"
        case "Start" if inner is not None:
            return f"Start/Stream {inner.get('track', 'inbound_track')}"
        case "Dial":
            return f"Dial {_dial_number(el)}"
    return el.tag


def _dial_number(el: ET.Element) -> str:  # its text, or its first noun's (<Number>, <Sip>)
    return ((el[0] if len(el) else el).text or "").strip()


def _snippet(body: str, limit: int = 120) -> str:
    one_line = " ".join(body.split())
    return (one_line[:limit] + "…") if len(one_line) > limit else (one_line or "(empty body)")


async def simulate_call(
    options: CallOptions,
    session: aiohttp.ClientSession | None = None,
    *,
    pacer: Pacer | None = None,
    on_transcript: Callable[[TranscriptEntry], None] | None = None,
    on_start_stream: Callable[[StreamStart], Awaitable[None]] | None = None,
) -> CallResult:
    """Place one simulated call; never raises for anything the service does.

    ``pacer`` overrides the pacing (default: ``VirtualPacer`` if ``options.fast``, else
    ``RealTimePacer``); ``on_transcript`` sees each transcript line as it happens;
    ``on_start_stream``, if given, is awaited for each ``<Start><Stream>`` instead of the
    simulator streaming it (it must not raise).
    """
    result = CallResult(call_sid=options.call_sid or wire.new_sid("CA"))
    pacer = pacer or (VirtualPacer() if options.fast else RealTimePacer())
    async with contextlib.AsyncExitStack() as own:
        if session is None:
            session = await own.enter_async_context(aiohttp.ClientSession())
        await _Call(options, session, pacer, result, on_transcript, on_start_stream).run()
    return result
