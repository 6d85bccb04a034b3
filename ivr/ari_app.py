"""Asterisk on the service: an ARI application that runs the consent flow on PBX calls.

For each caller entering the Stasis app: answer; create a mixing bridge; create an external-media
channel (RTP/PCMU over UDP) to a port of ours; bridge caller and external media; then play prompts
by sending paced RTP to the address Asterisk announced, take keys from ``ChannelDtmfReceived``
(and RFC 4733 packets should any arrive), and record the RTP we receive (the bridge's mix: the
caller, and the agent once connected) through the vault. After the decision a line with
``forward_to`` gets its agent originated into the bridge; a line without one records the caller
until hang-up or its maximum.

Each call has one task that takes its work (RTP, events, timers) from a queue, so the flow sees
events in order and one call's trouble stays in that call. The events websocket reconnects with
backoff when Asterisk restarts; calls still up are picked up again, calls that ended meanwhile
are finalised.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import itertools
import json
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp

from ivr.adapters import ari
from ivr.calls import CallSession
from ivr.config import AsteriskSettings, Config, Line, normalise_number
from ivr.consent import (
    Command,
    DigitPressed,
    HandOff,
    HangUp,
    PlayPrompt,
    PromptFinished,
    StopPrompt,
)
from ivr.prompt_library import PromptLibrary
from media.dtmf import DtmfDetector, parse_telephone_event
from media.prompts import prompt_frames
from media.rtp import JitterBuffer, RtpError, RtpSender, classify, parse_rtp
from storage.vault import Vault

log = logging.getLogger(__name__)

FRAME_MS = 20
NEAR_DEADLINE_SECONDS = 30.0  # beyond this, RTP's own clock is enough to reach a deadline
DRAIN_QUIET_SECONDS = 0.02
DRAIN_ROUNDS = 10
MAX_QUEUE = 2000  # per call: about 40 s of RTP; beyond that a call is hopelessly stuck
DIGIT_DEDUP_SECONDS = 0.5  # a key seen both as an ARI event and as RFC 4733 counts once
BACKOFF_START, BACKOFF_MAX = 0.5, 10.0
REST_TIMEOUT = 10.0
AGENT_RING_SECONDS = 30


def basic_auth(settings: AsteriskSettings) -> str:
    token = f"{settings.username}:{settings.password or ''}".encode()
    return "Basic " + base64.b64encode(token).decode("ascii")


class AriHttpError(Exception):
    def __init__(self, status: int, message: str, request: ari.Request) -> None:
        super().__init__(f"{request.method} {request.path}: {status} {message}")
        self.status = status


class AriRest:
    """The REST half of ARI: one request at a time per call, JSON in and out."""

    def __init__(self, session: aiohttp.ClientSession, settings: AsteriskSettings) -> None:
        self._session = session
        self._base = settings.url
        self._headers = {"Authorization": basic_auth(settings)}

    async def __call__(self, request: ari.Request) -> Any:
        try:
            async with self._session.request(
                request.method,
                self._base + request.path,
                params=dict(request.query),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=REST_TIMEOUT),
            ) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    message = body.decode(errors="replace")[:200]
                    with contextlib.suppress(ValueError, AttributeError):
                        message = str(json.loads(body).get("message", message))
                    raise AriHttpError(resp.status, message, request)
                if not body:
                    return None
                try:
                    return await resp.json(content_type=None)
                except ValueError:
                    return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AriHttpError(0, f"ARI unreachable: {exc}", request) from None


class RtpPort(asyncio.DatagramProtocol):
    """A call's UDP socket: packets only from the peer Asterisk announced are let through."""

    def __init__(self, call: AriCall) -> None:
        self.call = call
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:  # room for a second of audio should the loop stall briefly
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.call.rtp_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("call %s: RTP socket error: %s", self.call.label, exc)


@dataclass
class _Playback:
    play_id: int
    frames: deque[bytes]
    started_at: float  # call time


@dataclass
class AriCall:
    app: AriApplication
    caller: ari.Channel
    key: str
    args: tuple[str, ...] = ()
    session: CallSession | None = None
    bridge_id: str = ""
    media_id: str = ""
    agent_id: str | None = None
    port: int | None = None
    protocol: RtpPort | None = None
    peer: tuple[str, int] | None = None
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=lambda: asyncio.Queue(MAX_QUEUE))
    task: asyncio.Task[None] | None = None
    finished: bool = False
    playback: _Playback | None = None
    sender: RtpSender = field(default_factory=RtpSender)
    jitter: JitterBuffer = field(default_factory=JitterBuffer)
    dtmf: DtmfDetector = field(default_factory=DtmfDetector)
    media_base_ms: int | None = None
    started_wall: float = 0.0
    strangers: int = 0
    malformed: int = 0
    last_digit: tuple[str, float] | None = None
    caller_gone: bool = False
    packets: int = 0
    _pump_posted: bool = False
    reported: dict[str, str] = field(default_factory=dict)
    _reported_state: tuple[Any, bool] | None = None

    @property
    def label(self) -> str:
        return self.session.call_id if self.session else f"ari:{self.caller.id}"

    # -- input from the socket and the events loop -----------------------------------------------
    def rtp_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """The per-packet path, taken synchronously (no queue, no task switch): the audio
        gate and the jitter buffer need no awaiting; the call's task is woken only when the
        flow or the prompt pump has something due."""
        peer = self.peer
        if (
            peer is None
            or addr[1] != peer[1]
            or (peer[0] not in ("0.0.0.0", "::") and addr[0] != peer[0])
        ):
            self.strangers += 1
            if self.strangers == 1:
                log.warning("call %s: RTP from an unexpected address dropped", self.label)
            return
        session = self.session
        if session is None or self.finished:
            return
        self.packets += 1
        self._take_rtp(data)
        deadline = session.flow.deadline
        due = self.playback is not None or (deadline is not None and session.now >= deadline)
        if due and not self._pump_posted:
            self._pump_posted = True
            self.post("pump")

    def post(self, kind: str, value: Any = None) -> None:
        try:
            self.queue.put_nowait((kind, value))
        except asyncio.QueueFull:
            self.app.count("call_queue_overflow")

    # -- the call's task ------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            if await self._setup():
                await self._loop()
        except Exception:
            log.exception("call %s: failed", self.label)
        finally:
            await self._finish("call task ended")

    async def _setup(self) -> bool:
        app = self.app
        line = app.line_for(self.caller, self.args)
        if line is None:
            app.count("calls_unknown_line")
            log.info("ari channel %s: no line for this call; hanging up", self.caller.id)
            await app.rest_quiet(ari.hang_up(self.caller.id, "unallocated"))
            return False
        call_id = await asyncio.to_thread(
            app.vault.open_call,
            tenant=line.tenant,
            platform="asterisk",
            platform_call_id=self.caller.id,
            line=line.policy_id,
            caller=normalise_number(self.caller.caller_number)
            if self.caller.caller_number.startswith(("+", "00"))
            else None,
        )
        self.session = CallSession(
            vault=app.vault,
            line=line,
            call_id=call_id,
            platform_call_id=self.caller.id,
            prompts=app.prompts.for_line(line.tenant, line.language),
            started_wall=app.clock(),
            clock=app.clock,
            tracks=("mixed",),
        )
        self.started_wall = app.wall()
        app.count("calls")
        log.info(
            "call %s: asterisk channel %s, policy %s (%s, %s)",
            call_id,
            self.caller.id,
            line.policy_id,
            line.lawful_basis.value,
            line.consent_mode.value,
        )
        try:
            self.port, self.protocol = await app.bind_rtp(self)
        except OSError as exc:
            app.count("rtp_ports_exhausted")
            log.error("call %s: no RTP port: %s; hanging up", call_id, exc)
            await app.rest_quiet(ari.hang_up(self.caller.id, "congestion"))
            return False
        self.bridge_id = f"{ari.OWN_PREFIX}bridge-{self.key}"
        self.media_id = f"{ari.OWN_PREFIX}media-{self.key}"
        settings = app.settings
        try:
            await app.rest(ari.answer(self.caller.id))
            await app.rest(ari.create_bridge(self.bridge_id))
            media = await app.rest(
                ari.external_media(settings.app, self.media_id, settings.rtp_host, self.port)
            )
            app.own_channels[self.media_id] = self
            self.peer = ari.rtp_peer(media or {})
            await app.rest(ari.add_to_bridge(self.bridge_id, [self.caller.id, self.media_id]))
        except (AriHttpError, ari.AriEventError) as exc:
            app.count("ari_errors")
            log.error("call %s: setting up media failed: %s", call_id, exc)
            return False
        await self._run(await self.session.start())
        return True

    async def _loop(self) -> None:
        session = self.session
        assert session is not None
        queue = self.queue
        while not self.finished:
            if not queue.empty():  # the common case under load: no timer, no task
                kind, value = queue.get_nowait()
            else:
                timeout = None
                if self.playback is not None:
                    timeout = FRAME_MS / 1000  # keep prompts paced should RTP stop arriving
                elif session.flow.deadline is not None:
                    remaining = session.flow.deadline - session.now
                    if remaining < NEAR_DEADLINE_SECONDS:
                        timeout = max(remaining, 0) + 0.05
                if timeout is None:
                    kind, value = await queue.get()
                else:
                    try:
                        async with asyncio.timeout(timeout):
                            kind, value = await queue.get()
                    except TimeoutError:
                        kind, value = "timer", None
            if kind == "pump":
                self._pump_posted = False
            elif kind in ("digit", "rtp-digit"):
                await self._digit(value)
            elif kind == "agent":
                await self._agent_entered(value)
            elif kind == "end":
                await self._drain_then_finish(value)
                return
            await self._pump()

    async def _drain_then_finish(self, reason: str) -> None:
        """RTP that arrived before the hang-up may still sit in the socket when the hang-up
        event is read: let it in (until the socket has been quiet briefly) before finishing."""
        for _ in range(DRAIN_ROUNDS):
            seen = self.packets
            await asyncio.sleep(DRAIN_QUIET_SECONDS)
            if self.packets == seen:
                break
        await self._finish(reason)

    async def _pump(self) -> None:
        """Send the prompt frames that are due, and give the flow its ticks."""
        session = self.session
        assert session is not None
        now = session.at(session.call_time()) if self.playback is None else session.now
        pb = self.playback
        if pb is not None and self.protocol and self.protocol.transport and self.peer:
            now = session.at(session.call_time())
            due = int((now - pb.started_at) * 1000 // FRAME_MS) + 1
            sent = 0
            while pb.frames and due > 0:
                frame = pb.frames.popleft()
                self.protocol.transport.sendto(self.sender.packet(frame), self.peer)
                due -= 1
                sent += 1
            if not pb.frames and self.playback is pb:
                self.playback = None
                await self._run(await session.handle(PromptFinished(at=now, play_id=pb.play_id)))
            elif sent:
                pb.started_at += sent * FRAME_MS / 1000
        await self._run(await session.tick(now))

    def _take_rtp(self, data: bytes) -> None:
        session = self.session
        assert session is not None
        try:
            packet = parse_rtp(data)
        except RtpError as exc:
            self.malformed += 1
            self.jitter.stats.malformed += 1
            if self.malformed == 1:
                log.warning("call %s: malformed RTP dropped: %s", self.label, exc)
            return
        kind = classify(packet)
        if kind == "dtmf":
            with contextlib.suppress(ValueError):
                # One packet can close two digits when end packets were lost.
                for digit in (
                    self.dtmf.feed(packet.timestamp, parse_telephone_event(packet.payload)) or ""
                ):
                    self.post("rtp-digit", digit)
            return
        if kind != "audio":
            return
        if self.media_base_ms is None:
            self.media_base_ms = int(session.call_time() * 1000)
        for frame in self.jitter.push(packet):
            session.audio(0, self.media_base_ms + frame.timestamp_ms, frame.payload)
            session.at((self.media_base_ms + frame.timestamp_ms + FRAME_MS) / 1000)

    async def _digit(self, digit: str) -> None:
        session = self.session
        assert session is not None
        now = session.at(session.call_time())
        last = self.last_digit
        if last and last[0] == digit and now - last[1] < DIGIT_DEDUP_SECONDS:
            return  # the same key reported by both ARI and RFC 4733
        self.last_digit = (digit, now)
        await self._run(await session.handle(DigitPressed(at=now, digit=digit)))

    async def _report(self) -> None:
        """Tell the PBX what was decided, as channel variables its dialplan or CDR can use:
        IVR_CONSENT_DECISION, IVR_LAWFUL_BASIS and, once recording, IVR_RECORDING_ID."""
        session = self.session
        assert session is not None
        values = {
            "IVR_CONSENT_DECISION": session.decision.value if session.decision else "",
            "IVR_LAWFUL_BASIS": session.line.lawful_basis.value,
            "IVR_RECORDING_ID": session.recording.id if session.recording else "",
        }
        for name, value in values.items():
            if value and self.reported.get(name) != value and not self.caller_gone:
                self.reported[name] = value
                await self.app.rest_quiet(ari.set_variable(self.caller.id, name, value))

    async def _run(self, commands: list[Command]) -> None:
        session = self.session
        assert session is not None
        if (
            session.decision is not None
            and (
                session.decision,
                session.recording is not None,
            )
            != self._reported_state
        ):
            self._reported_state = (session.decision, session.recording is not None)
            await self._report()
        for command in commands:
            if isinstance(command, PlayPrompt):
                prompt = session.prompts[command.prompt_id]
                self.sender.start_talkspurt()
                self.playback = _Playback(
                    command.play_id, deque(prompt_frames(prompt)), session.call_time()
                )
            elif isinstance(command, StopPrompt):
                self.playback = None
            elif isinstance(command, HandOff):
                await self._hand_off(command)
            elif isinstance(command, HangUp):
                log.info("call %s: hanging up (%s)", session.call_id, command.reason)
                await self.app.rest_quiet(ari.hang_up(self.caller.id))

    async def _hand_off(self, command: HandOff) -> None:
        session = self.session
        assert session is not None
        forward = session.line.forward_to
        if forward is None:
            if not command.recording:  # a message line whose caller refused: nothing to do
                await self.app.rest_quiet(ari.hang_up(self.caller.id))
            return
        self.agent_id = f"{ari.OWN_PREFIX}agent-{self.key}"
        self.app.own_channels[self.agent_id] = self
        try:
            await self.app.rest(
                ari.originate(
                    self.app.settings.app,
                    self.agent_id,
                    self.app.settings.endpoint(forward),
                    session.line.number,
                    AGENT_RING_SECONDS,
                )
            )
        except AriHttpError as exc:
            self.app.count("ari_errors")
            log.error("call %s: could not reach the agent: %s", session.call_id, exc)

    async def _agent_entered(self, channel_id: str) -> None:
        try:
            await self.app.rest(ari.answer(channel_id))
            await self.app.rest(ari.add_to_bridge(self.bridge_id, [channel_id]))
            log.info("call %s: agent connected", self.label)
        except AriHttpError as exc:
            self.app.count("ari_errors")
            log.error("call %s: agent could not join: %s", self.label, exc)

    async def _finish(self, reason: str) -> None:
        """Everything a call leaves behind is closed here, exactly once."""
        if self.finished:
            return
        self.finished = True
        app = self.app
        session = self.session
        if session is not None:
            for frame in self.jitter.flush():
                if self.media_base_ms is not None:
                    session.audio(0, self.media_base_ms + frame.timestamp_ms, frame.payload)
            row = await session.end(reason)
            await asyncio.to_thread(
                app.vault.catalog.update_call,
                session.call_id,
                ended_at=app.clock().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                outcome=session.decision.value if session.decision else "ended",
            )
            stats = self.jitter.stats
            log.info(
                "call %s: ended (%s), decision %s, recording %s, %d frames stored, "
                "rtp lost %d dup %d late %d strangers %d malformed %d",
                session.call_id,
                reason,
                session.decision.value if session.decision else "-",
                f"{row.id} {row.status.value}" if row else "none",
                session.stats.frames_stored,
                stats.lost,
                stats.duplicates,
                stats.late,
                self.strangers,
                self.malformed,
            )
            if self.jitter.gaps:
                # Losses were filled with silence; say where, so a listener knows the quiet
                # at 12.3 s is the network's and not the caller's.
                log.info(
                    "call %s: silence filled for lost RTP at %s",
                    session.call_id,
                    ", ".join(f"{start}+{length} ms" for start, length in self.jitter.gaps[:20]),
                )
            app.count("calls_completed")
            app.count("frames_stored", session.stats.frames_stored)
            app.count("frames_lost", session.stats.frames_lost)
            app.count("rtp_lost", stats.lost)
        for channel_id in (self.agent_id, self.media_id):
            if channel_id:
                await app.rest_quiet(ari.hang_up(channel_id))
        if self.bridge_id:
            await app.rest_quiet(ari.destroy_bridge(self.bridge_id))
        if not self.caller_gone:
            await app.rest_quiet(ari.hang_up(self.caller.id))
        if self.protocol and self.protocol.transport:
            self.protocol.transport.close()  # releases the UDP port
        app.forget(self)


class AriApplication:
    """The Stasis application: events in, one ``AriCall`` per caller."""

    def __init__(
        self,
        config: Config,
        vault: Vault,
        prompts: PromptLibrary,
        *,
        clock: Callable[[], datetime],
        wall: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        assert config.asterisk is not None
        self.config = config
        self.settings = config.asterisk
        self.vault = vault
        self.prompts = prompts
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self.calls: dict[str, AriCall] = {}  # by caller channel id
        self.own_channels: dict[str, AriCall] = {}
        self.counters: dict[str, int] = {}
        self.connected = False
        self.connections = 0
        self._keys = itertools.count(1)
        self._next_port = self.settings.rtp_port_min
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self.rest = AriRest(self._session, self.settings)
        self._task = asyncio.create_task(self._events_loop(), name="ari-events")

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for call in list(self.calls.values()):
            call.post("end", "service shutting down")
        tasks = [c.task for c in self.calls.values() if c.task]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if self._session:
            await self._session.close()

    async def rest_quiet(self, request: ari.Request) -> None:
        """Best-effort clean-up calls: a 404 just means it is gone already."""
        try:
            await self.rest(request)
        except AriHttpError as exc:
            if exc.status not in (404, 409):
                log.debug("%s", exc)

    # -- events --------------------------------------------------------------------------------
    async def _events_loop(self) -> None:
        assert self._session is not None
        settings = self.settings
        url = settings.url.replace("http", "ws", 1) + "/events"
        backoff = BACKOFF_START
        while not self._stopping:
            try:
                async with self._session.ws_connect(
                    url,
                    params={"app": settings.app, "subscribeAll": "false"},
                    headers={"Authorization": basic_auth(settings)},
                    heartbeat=30,
                    max_msg_size=ari.MAX_EVENT_BYTES,
                ) as ws:
                    self.connected = True
                    self.connections += 1
                    backoff = BACKOFF_START
                    log.info("ARI events connected (%s, app %s)", settings.url, settings.app)
                    if self.connections > 1:
                        await self._resync()
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self._on_event_text(msg.data)
                        elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                            break
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("ARI events: %s; retrying in %.1f s", exc, backoff)
            else:
                if not self._stopping:
                    log.warning("ARI events connection lost; retrying in %.1f s", backoff)
            self.connected = False
            if self._stopping:
                return
            await self.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _resync(self) -> None:
        """After a reconnect: calls whose caller vanished meanwhile are finalised."""
        for call in list(self.calls.values()):
            try:
                await self.rest(ari.get_channel(call.caller.id))
            except AriHttpError as exc:
                if exc.status == 404:
                    call.post("end", "caller gone while ARI was disconnected")

    def _on_event_text(self, text: str) -> None:
        try:
            event = ari.parse_event(text)
        except ari.AriEventError as exc:
            self.count("events_bad")
            log.warning("ARI event dropped: %s", exc)
            return
        if isinstance(event, ari.UnknownEvent):
            self.count("events_other")
            return
        channel = event.channel
        if isinstance(event, ari.StasisStart):
            if channel.ours:
                call = self.own_channels.get(channel.id)
                if call is not None and channel.id == call.agent_id:
                    call.post("agent", channel.id)
                return
            if channel.id in self.calls:
                return  # a repeated StasisStart for a call we already have
            call = AriCall(self, channel, str(next(self._keys)), event.args)
            self.calls[channel.id] = call
            call.task = asyncio.create_task(call.run(), name=f"ari-call-{channel.id}")
            return
        call = self.calls.get(channel.id)
        if call is None:
            own = self.own_channels.get(channel.id)
            if own is None:
                self.count("events_unknown_channel")
                log.debug("ARI %s for unknown channel %s ignored", type(event).__name__, channel.id)
            elif channel.id == own.agent_id and not isinstance(event, ari.DtmfReceived):
                own.post("end", "agent hung up")
            return
        if isinstance(event, ari.DtmfReceived):
            call.post("digit", event.digit)
        else:
            call.caller_gone = True
            call.post("end", f"caller hung up ({type(event).__name__})")

    # -- per-call helpers ----------------------------------------------------------------------
    def line_for(self, channel: ari.Channel, args: tuple[str, ...]) -> Line | None:
        """The line a call is for: the first Stasis argument, the IVR_LINE channel variable,
        or the dialled extension, whichever names a configured number first."""
        first_arg = args[0] if args else ""
        for candidate in (first_arg, channel.variables.get("IVR_LINE", ""), channel.exten):
            line = self.config.line_for(candidate) if candidate else None
            if line is not None:
                return line
        return None

    async def bind_rtp(self, call: AriCall) -> tuple[int, RtpPort]:
        loop = asyncio.get_running_loop()
        low, high = self.settings.rtp_port_min, self.settings.rtp_port_max
        span = high - low + 1
        for _ in range(span):
            port = self._next_port
            self._next_port = low + (port - low + 1) % span
            try:
                _, protocol = await loop.create_datagram_endpoint(
                    lambda: RtpPort(call),
                    local_addr=(self.settings.rtp_bind, port),
                    family=socket.AF_INET6 if ":" in self.settings.rtp_bind else socket.AF_INET,
                )
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            return port, protocol
        raise OSError(errno.EADDRINUSE, f"all {span} RTP ports in {low}-{high} are in use")

    def forget(self, call: AriCall) -> None:
        self.calls.pop(call.caller.id, None)
        for channel_id in (call.media_id, call.agent_id):
            if channel_id:
                self.own_channels.pop(channel_id, None)
