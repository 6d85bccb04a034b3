"""Twilio on the service: voice, continue and status webhooks, and the two Media Streams.

Call life: ``POST /twilio/voice`` answers ``<Connect><Stream>`` to the consent stream, where the
flow plays its prompt and listens for keys. When the flow hands off we close that socket and
Twilio asks ``/twilio/continue``, which answers ``<Start><Stream both_tracks>`` (recording
allowed) plus ``<Dial>``, or ``<Dial>`` alone. A line with nowhere to forward to keeps the caller
on the consent stream and records them there. ``POST /twilio/status`` ends the call.

Time: the flow runs on call time taken from the media timestamps Twilio sends (it streams audio
continuously, silence included), so timeouts behave the same in real time and in the harness's
fast mode. A wall-clock fallback covers a stream that stops sending.

``tw`` is Twilio's wire (``messages.py``: what Twilio sends and what we answer, as plain values),
as ``ari`` is Asterisk's on that platform.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TypeVar

from aiohttp import WSMsgType, web

from ivr.calls import TRACK_AGENT, TRACK_CALLER, Call, CallRegistry, CallSession, carry_out
from ivr.calls.alarm import Alarm
from ivr.calls.handover import hand_over
from ivr.calls.numbering import MediaNumbering
from ivr.calls.playback import FRAME_MS, PacedPrompt
from ivr.calls.relay import RELAY_BODY, HeldElsewhere, Holder, Relay
from ivr.config import Config, normalise_number
from ivr.consent import Command, DigitPressed, PromptFinished
from ivr.log_limits import Warnings
from ivr.platforms.twilio import busy
from ivr.platforms.twilio import messages as tw
from ivr.platforms.twilio.signature import SIGNATURE_HEADER, is_valid_signature
from ivr.platforms.twilio.stream_token import StreamTokens, TokenError
from ivr.serving import BodyRefused, BodyTooLarge, read_body
from media.prompts import Prompt

log = logging.getLogger(__name__)
T = TypeVar("T")

PLATFORM = "twilio"
TERMINAL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
MAX_BAD_MESSAGES = 50  # per stream, before we stop believing it is Twilio talking
MAX_BEFORE_START = 4  # messages kept until the start (connected, start), to relay with it
START_TIMEOUT_SECONDS = 10.0  # Twilio sends connected and start at once
# Prompt audio goes out this far ahead of call time, a batch every PROMPT_BATCH_SECONDS: Twilio
# buffers what it is sent and plays it in real time, so the caller hears no gap, the first frame
# of every call leaves at once however many calls start together, and a key press that stops
# the prompt has little to clear. More lead than the load test's fast-mode sync (0.5 s).
PROMPT_LEAD_SECONDS = 0.6
PROMPT_BATCH_SECONDS = 0.2
# The frames a batch holds go out as one media message (a message each would be a socket write
# each, ten per batch and call), at most this many per message: Twilio's docs set no length on
# a media payload, and Twilio's own samples send audio in whatever lengths it arrives in.
PROMPT_MESSAGE_FRAMES = 50
UNKNOWN_NUMBER_TEXT = "This number is not in service. Goodbye."
NO_RECORDING_STREAM = "the recording stream never connected"
# Twilio's webhooks are a few dozen short fields (about 2 KB); a larger body is refused before
# it is read, since it is read before its signature can be checked.
MAX_WEBHOOK_BYTES = 64 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"
HOLDER_GONE = "the process holding the call stopped"


@dataclass
class TwilioCalls:
    """The service's Twilio side: configuration, stream tokens, the open sockets. The calls
    themselves live in the shared ``CallRegistry``."""

    config: Config
    calls: CallRegistry
    tokens: StreamTokens
    clock: Callable[[], datetime]
    wall: Callable[[], float] = time.time
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    accepting: bool = True
    relay: Relay | None = None  # to the process holding a call (ivr/calls/relay.py)
    # This process's id in the stream URLs it gives out, and whether a stream that names
    # another process of this machine is handed to it (ivr/calls/handover.py).
    holder_id: str = ""
    handover: bool = False
    counters: Counter[str] = field(default_factory=Counter)  # served at /healthz
    warnings: Warnings = field(default_factory=lambda: Warnings(log))  # ivr/log_limits.py

    def call(self, call_sid: str) -> Call | None:
        call = self.calls.get(PLATFORM, call_sid)
        if call is not None:
            self.calls.heard(call)
        return call

    async def held(self, call_sid: str) -> Holder | None:
        """A call this process does not hold: ``HeldElsewhere`` if a live process does (the
        request is passed on to it); its ``Holder`` if the one that did died with the call
        open; None if nobody holds it (ivr/calls/relay.py)."""
        holder = await self.relay.find(PLATFORM, call_sid) if self.relay else None
        return holder if holder is not None and not holder.ended else None


TWILIO = web.AppKey("twilio", TwilioCalls)


def _public_base(request: web.Request, config: Config) -> str:
    if config.public_url:
        return config.public_url.rstrip("/")
    return f"{request.scheme}://{request.host}"


def _bad_request(twilio: TwilioCalls, request: web.Request, why: str) -> web.HTTPException:
    twilio.counters["webhooks_bad"] += 1
    twilio.warnings.warn("webhook-bad", "%s: bad webhook: %s", request.path, why)
    return web.HTTPBadRequest(text=f"{why}\n")


async def _read_form(request: web.Request, twilio: TwilioCalls) -> list[tuple[str, str]]:
    """The webhook's body as form fields: 413 over MAX_WEBHOOK_BYTES, decided before the body
    is read (``read_body``); 400 unless it is a well-formed URL-encoded form, the only kind
    Twilio sends."""
    try:
        body = request[RELAY_BODY] = await read_body(
            request, MAX_WEBHOOK_BYTES, content_type=FORM_TYPE
        )
        return tw.parse_form(body)
    except BodyTooLarge as exc:
        twilio.counters["webhooks_too_large"] += 1
        twilio.warnings.warn("webhook-too-large", "%s: refused: body too large", request.path)
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_WEBHOOK_BYTES, actual_size=exc.size
        ) from None
    except (BodyRefused, tw.WebhookError) as exc:
        raise _bad_request(twilio, request, str(exc)) from None


async def _signed(
    request: web.Request, parse: Callable[[Mapping[str, str]], T]
) -> tuple[TwilioCalls, T]:
    """The webhook's form, parsed by ``parse``, if Twilio signed it; 403 otherwise (413 or 400
    before that if the body is too large or not a form), 400 if ``parse`` refuses it."""
    twilio = request.app[TWILIO]
    params = await _read_form(request, twilio)
    url = _public_base(request, twilio.config) + request.path_qs
    token = twilio.config.twilio_auth_token
    if not token or not is_valid_signature(
        token, url, params, request.headers.get(SIGNATURE_HEADER)
    ):
        twilio.counters["webhooks_forbidden"] += 1
        why = "no auth token set" if not token else "bad signature"
        twilio.warnings.warn(f"webhook-forbidden-{why}", "%s: refused: %s", request.path, why)
        raise web.HTTPForbidden(text="invalid X-Twilio-Signature\n")
    try:
        return twilio, parse(dict(params))
    except tw.WebhookError as exc:
        raise _bad_request(twilio, request, str(exc)) from None


def _twiml(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/xml")


async def voice(request: web.Request) -> web.Response:
    twilio, hook = await _signed(request, tw.CallWebhook.from_form)
    if not twilio.accepting:
        raise web.HTTPServiceUnavailable(text="shutting down\n")
    line = twilio.config.line_for(hook.to)
    if line is None:
        twilio.counters["calls_unknown_number"] += 1
        log.info("call %s: no line for the dialled number; hanging up", hook.call_sid)
        return _twiml(tw.twiml_say_hangup(UNKNOWN_NUMBER_TEXT))
    if twilio.call(hook.call_sid) is None:
        if busy.full(twilio.calls, twilio.config.limits.max_calls):
            return _twiml(await busy.turned_away(twilio, PLATFORM, hook, line))
        # The call's clock starts when the consent stream does (the caller hears us from
        # then); until then its set-up time runs (the evidence's setup_seconds).
        await twilio.calls.open(
            platform=PLATFORM,
            platform_call_id=hook.call_sid,
            line=line,
            caller=normalise_number(hook.from_),
        )
        twilio.counters["calls"] += 1
    base = _public_base(request, twilio.config)
    token = twilio.tokens.issue("consent", hook.call_sid, twilio.wall())
    return _twiml(
        tw.twiml_consent_stream(
            stream_url(twilio, base, "consent"),
            {"token": token},
            f"{base}/twilio/continue",
        )
    )


def stream_url(twilio: TwilioCalls, base: str, kind: str) -> str:
    """Where Twilio opens a call's ``kind`` stream: named after this process, the call's
    holder, so that another process of this machine that the stream lands on can hand the
    connection over before reading it (ivr/calls/handover.py)."""
    url = f"{tw.websocket_base(base)}/twilio/stream/{kind}"
    return f"{url}/{twilio.holder_id}" if twilio.holder_id else url


async def continue_call(request: web.Request) -> web.Response:
    twilio, hook = await _signed(request, tw.CallWebhook.from_form)
    call = twilio.call(hook.call_sid)
    line = twilio.config.line_for(hook.to)
    if call is None and (gone := await twilio.held(hook.call_sid)) and line and line.forward_to:
        # Its consent flow and recording went with the process that held it: the caller
        # still reaches the line's agent, unrecorded (which needs nobody's consent).
        log.warning("call %s: %s; forwarding unrecorded", gone.call_id, HOLDER_GONE)
        return _twiml(tw.twiml_dial(line.forward_to))
    if call is None or call.session is None:
        log.warning("twilio %s: /continue for a call we do not know; hanging up", hook.call_sid)
        return _twiml(tw.twiml_hangup())
    forward = call.line.forward_to
    if call.hung_up or forward is None:
        return _twiml(tw.twiml_hangup())
    if call.session.recording_allowed:
        base = _public_base(request, twilio.config)
        token = twilio.tokens.issue("recording", hook.call_sid, twilio.wall())
        # Until the recording stream is admitted, what the recording should hold is missing.
        call.session.media_failure = NO_RECORDING_STREAM
        return _twiml(
            tw.twiml_record_and_dial(
                stream_url(twilio, base, "recording"),
                {"token": token},
                forward,
                f"{base}/twilio/stream-status",
            )
        )
    return _twiml(tw.twiml_dial(forward))


async def stream_status(request: web.Request) -> web.Response:
    """``<Stream statusCallback>``: a recording stream that failed (or never connected) leaves
    its recording marked incomplete or failed, with Twilio's reason, not complete."""
    twilio, event = await _signed(request, tw.StreamStatus.from_form)
    call = twilio.call(event.call_sid)
    if call is None:
        await twilio.held(event.call_sid)
    if call is None or call.session is None:
        return web.json_response({"call_sid": event.call_sid, "known": False})
    if event.event == "stream-error" and event.stream_name == tw.RECORDING_STREAM_NAME:
        twilio.counters["recording_streams_failed"] += 1
        why = event.error or "no reason given"
        log.warning("call %s: Twilio reports the recording stream failed: %s", call.call_id, why)
        call.session.media_failure = f"the recording stream failed: {why}"
    return web.json_response({"call_sid": event.call_sid, "event": event.event})


async def status(request: web.Request) -> web.Response:
    twilio, hook = await _signed(request, tw.CallWebhook.from_form)
    call = twilio.call(hook.call_sid)
    if call is None:
        gone = await twilio.held(hook.call_sid)
        if gone is not None and hook.call_status in TERMINAL_STATUSES:
            await twilio.calls.close_row(gone.call_id, f"call {hook.call_status}; {HOLDER_GONE}")
            return web.json_response({"call_sid": hook.call_sid, "call_id": gone.call_id})
        return web.json_response({"call_sid": hook.call_sid, "known": False})
    if hook.call_status in TERMINAL_STATUSES:
        # Also for a call whose consent stream never started: its row is closed now.
        await twilio.calls.finish(call, f"call {hook.call_status}")
        twilio.counters["calls_completed"] += 1
    summary = call.session.summary() if call.session else {"call_id": call.call_id}
    return web.json_response({"call_sid": hook.call_sid, **summary})


# -- Media Streams --------------------------------------------------------------------------------
def _ignore_note(kind: str, message: str, *args: object, level: int = logging.WARNING) -> None:
    pass


def _no_where() -> str:
    return "a stream that has ended"


class _Stream:
    """One Media Streams websocket: message order, sequence numbers, the call it is for, and
    the ``Wire`` the call's commands go out on (a consent stream can play and take keys; a
    recording stream is one-way: Twilio delivers no keys on it and plays nothing)."""

    def __init__(
        self, twilio: TwilioCalls, request: web.Request, ws: web.WebSocketResponse, kind: str
    ) -> None:
        self.twilio = twilio
        self.request = request
        self.ws = ws
        self.kind = kind
        self.first: list[str] = []  # messages before the start, kept to relay with it
        self.held_elsewhere = False  # another process holds the call: relayed there
        self.holder_url: str | None = None
        self.call: Call | None = None
        self.session: CallSession | None = None
        self.stream_sid = ""
        self.tracks: frozenset[str] = frozenset()
        self.base_ms = 0
        self.numbering = MediaNumbering(twilio.counters, self.note, self.where, twilio.wall)
        self.bad = 0
        self.noted: set[str] = set()
        self.closed_by_us = False
        # Prompts not yet sent whole, in the order they play: one after the other, as Twilio
        # plays what it is sent. A list, not a deque: it holds a prompt or two, and an empty
        # deque is 600 bytes on every stream (the recording streams never play).
        self.playing: list[PacedPrompt] = []
        self.pace_at = 0.0  # call time of the next batch of their frames

    async def close(self, code: int, reason: str) -> None:
        self.closed_by_us = True
        await self.ws.close(code=code, message=reason.encode()[:120])

    def where(self) -> str:
        return f"call {self.call.call_id}" if self.call else f"{self.kind} stream"

    def release(self) -> None:
        """Break the stream's reference cycles (its numbering calls back this stream's methods;
        a websocket that failed to write keeps the error, whose traceback holds the websocket)
        once the stream is over. Everything the stream held (its websocket, request,
        connection, the call's session) is then freed when the handler returns. Left to the
        collector, a finished stream waited for a pass over older objects, which at
        ``GC_THRESHOLDS`` comes after thousands of calls: some 26 KiB a call, held meanwhile
        (``tests/test_stream_memory.py``)."""
        self.numbering.note = _ignore_note
        self.numbering.where = _no_where
        failure = self.ws.exception()
        if failure is not None:  # aiohttp keeps a failed write's error: its traceback holds ws
            failure.__traceback__ = None

    def note(self, kind: str, message: str, *args: object, level: int = logging.WARNING) -> None:
        """A word about this stream's input, logged for the first of its kind on the stream
        (the counters count them all); before the stream is admitted (anyone can open one),
        a warning at most once a minute for all streams."""
        if self.call is None:
            self.twilio.warnings.warn(f"stream-{kind}", message, *args)
        elif kind not in self.noted:
            self.noted.add(kind)
            log.log(level, message + " (logged once per stream)", *args)

    async def admit(self, start: tw.Start) -> bool:
        twilio = self.twilio
        try:
            twilio.tokens.verify(
                start.parameters.get("token"), self.kind, start.call_sid, twilio.wall()
            )
        except TokenError as exc:
            return await self._refuse(start.call_sid, str(exc))
        call = twilio.call(start.call_sid)
        if call is None:
            try:
                await twilio.held(start.call_sid)
            except HeldElsewhere as held:
                self.held_elsewhere, self.holder_url = True, held.url
                return False
        if call is not None and call.session is None and self.kind == "consent":
            call.session = twilio.calls.begin(call)  # the caller can hear us from now on
        if call is None or call.session is None or self.kind in call.streams:
            why = "call is not in progress" if call is None else "token already used"
            return await self._refuse(start.call_sid, why)
        if self.kind == "recording" and not call.session.recording_allowed:
            return await self._refuse(start.call_sid, "recording is not allowed for this call")
        call.attach(self, self.kind)
        if self.kind == "recording" and call.session.media_failure == NO_RECORDING_STREAM:
            call.session.media_failure = None
        self.call, self.session = call, call.session
        self.stream_sid = start.stream_sid
        self.tracks = frozenset(start.tracks)
        self.base_ms = int(call.session.call_time() * 1000)
        self.numbering.start(start.sequence)
        return True

    async def _refuse(self, call_sid: str, why: str) -> bool:
        self.twilio.counters["streams_refused"] += 1
        self.twilio.warnings.warn(
            f"stream-refused-{why}", "%s stream for twilio %s refused: %s", self.kind, call_sid, why
        )
        await self.close(tw.CLOSE_POLICY, why)
        return False

    def in_order(self, sequence: int) -> bool:
        numbering = self.numbering
        if numbering.in_order(sequence):
            return True
        if numbering.jump_seq != sequence:  # late or repeated (a jump is counted on its own)
            self.bad += 1
        return False

    async def run(self, commands: list[Command]) -> None:
        assert self.call is not None
        await carry_out(self.call, self, commands)

    # -- the Wire ---------------------------------------------------------------------------
    async def play(self, prompt: Prompt, play_id: int) -> None:
        if self.kind != "consent":
            return  # a one-way stream cannot play anything
        assert self.session is not None
        now = self.session.call_time()
        if self.playing:  # it plays once the one before it has
            last = self.playing[-1]
            starts = last.started_at + last.remaining * FRAME_MS / 1000
        else:
            starts = now
        self.playing.append(PacedPrompt.start(prompt, play_id, starts))
        await self.pace(now)

    async def pace(self, now: float) -> None:
        """Send the prompt frames due by ``now`` plus the lead, and after each prompt's last
        frame its mark (which Twilio echoes once the audio before it has played)."""
        sid, send = self.stream_sid, self.ws.send_str
        while self.playing:
            playing = self.playing[0]
            due = playing.due(now + PROMPT_LEAD_SECONDS)
            for first in range(0, len(due), PROMPT_MESSAGE_FRAMES):
                audio = b"".join(due[first : first + PROMPT_MESSAGE_FRAMES])
                await send(tw.media_message(sid, audio))
            if not playing.finished:
                break
            del self.playing[0]
            await send(tw.mark_message(sid, tw.play_mark(playing.play_id)))
        self.pace_at = now + PROMPT_BATCH_SECONDS

    async def stop_playing(self) -> None:
        if self.kind != "consent":
            return
        # What is not sent yet is not; the marks are, so that the clear echoes them all, as it
        # does the marks of audio Twilio had buffered.
        while self.playing:
            play_id = self.playing.pop(0).play_id
            await self.ws.send_str(tw.mark_message(self.stream_sid, tw.play_mark(play_id)))
        await self.ws.send_str(tw.clear_message(self.stream_sid))

    async def hand_off(self, recording: bool) -> None:
        # Closing the consent stream makes Twilio ask /twilio/continue, which dials onwards
        # (with a recording stream if ``recording``).
        if self.kind == "consent":
            await self.close(tw.CLOSE_NORMAL, "consent phase done")

    async def hang_up(self, reason: str) -> None:
        # /twilio/continue answers <Hangup/> for this call from now on (call.hung_up).
        assert self.call is not None
        log.info("call %s: hanging up (%s)", self.call.call_id, reason)
        await self.close(tw.CLOSE_NORMAL, reason)


async def _stream_handler(request: web.Request, kind: str) -> web.StreamResponse:
    twilio = request.app[TWILIO]
    holder = request.match_info.get("holder")
    if (
        twilio.handover
        and holder is not None
        and holder != twilio.holder_id
        and hand_over(request, holder)
    ):
        # The connection is the holder's now; this answer is never written (aborted).
        twilio.counters["streams_handed_over"] += 1
        return web.Response(status=204)
    # Pings are answered in order with the messages (_serve_stream), or by the process a
    # stream is relayed to: a pong means everything before the ping was acted on.
    ws = web.WebSocketResponse(max_msg_size=tw.MAX_MESSAGE_BYTES, heartbeat=None, autoping=False)
    try:
        await ws.prepare(request)
    except ConnectionResetError:
        # Gone before the handshake's answer could be written (a peer that gave up waiting,
        # under load): nothing was opened, so nothing to end. Anyone can provoke it, so it is
        # counted and its line bounded like any refusal's, never an aiohttp traceback.
        twilio.counters["streams_gone_before_open"] += 1
        twilio.warnings.warn(
            "stream-gone", "%s stream: the peer left before the websocket opened", kind
        )
        # Not ``ws``: half prepared, aiohttp would try to close it and log a traceback. This
        # answer is never delivered either; it is what the access log shows (nginx's 499).
        return web.Response(status=499, reason="Client Closed Request")
    twilio.sockets.add(ws)
    stream = _Stream(twilio, request, ws, kind)
    try:
        await _serve_stream(stream)
    except Exception:
        # One bad call never takes the service down: log it, close its socket, end the call.
        log.exception("%s: %s stream failed", stream.where(), kind)
        if not ws.closed:
            await stream.close(tw.CLOSE_INTERNAL, "internal error")
    finally:
        twilio.sockets.discard(ws)
        try:
            if stream.call is not None:  # without a 'stop' from Twilio, the stream was lost
                twilio.calls.heard(stream.call)
                lost = None if stream.closed_by_us else f"{kind} stream lost"
                await stream.call.detach(stream, lost=lost)
        finally:
            stream.release()
    return ws


async def _serve_stream(stream: _Stream) -> None:
    """Read the stream's messages one at a time, acting on each in full (its commands written
    out) before reading the next. Keep it so: the simulator's fast mode relies on it, a
    websocket ping answered meaning everything before it has been acted on."""
    alarm = Alarm()
    try:
        await _read_stream(stream, alarm)
    finally:
        alarm.close()


async def _read_stream(stream: _Stream, alarm: Alarm) -> None:
    """``_serve_stream``'s loop: ``alarm`` wakes it when no message comes in time."""
    twilio, ws = stream.twilio, stream.ws
    text = WSMsgType.TEXT
    while not ws.closed:
        session = stream.session
        # A socket that never says who it is goes away; a call with a deadline near gets a
        # timer (the timer rule in ivr.calls.session), and so does a prompt being played. A
        # batch already due (wall time ahead of the media's) wakes it at once.
        if session is None:
            timeout: float | None = START_TIMEOUT_SECONDS
        else:
            timeout = session.timer()
            if stream.playing:
                wait = stream.pace_at - session.call_time()
                timeout = wait if timeout is None else min(timeout, wait)
        try:
            msg = await alarm.wait(ws.receive, timeout)
        except TimeoutError:
            if session is None:
                twilio.counters["streams_refused"] += 1
                stream.note(
                    "no-start", "%s stream: no start within %.0f s; closed", stream.kind, timeout
                )
                await stream.close(tw.CLOSE_POLICY, "no start message")
                return
            # No media for a while: let wall time stand in for call time.
            now = session.call_time()
            await stream.pace(now)
            await stream.run(await session.tick(now))
            continue
        if msg.type is not text:
            if msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
                continue
            if msg.type == WSMsgType.PONG:
                continue
            if msg.type == WSMsgType.ERROR:
                if isinstance(ws.exception(), ValueError) or ws.close_code == tw.CLOSE_TOO_BIG:
                    twilio.counters["messages_too_big"] += 1
                    stream.note("too-big", "%s: message too big; stream closed", stream.where())
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            twilio.counters["messages_bad"] += 1
            continue
        data = msg.data
        values = tw.media_values(data)
        if values is None or session is None:  # not well-formed media, or before the start
            if session is None and len(stream.first) < MAX_BEFORE_START:
                stream.first.append(data)
            try:
                # What tw.parse_stream_message would give, without a second media_values.
                message = tw.parse_slowly(data) if values is None else tw.Media(*values)
            except tw.StreamError as exc:
                stream.bad += 1
                twilio.counters["messages_bad"] += 1
                if (
                    exc.close_code in (tw.CLOSE_POLICY, tw.CLOSE_TOO_BIG)
                    or stream.bad > MAX_BAD_MESSAGES
                ):
                    stream.note("closing", "%s: %s; closing", stream.where(), exc)
                    await stream.close(exc.close_code, str(exc))
                    return
                stream.note("bad", "%s: message dropped: %s", stream.where(), exc)
                continue
            if type(message) is not tw.Media or session is None:
                if not await _dispatch(stream, message):
                    return
                continue
            # Media only the reference parser reads (tw.parse_slowly): as any other.
            values = message.sequence, message.track, message.timestamp_ms, message.payload
        # The hot path, every 20 ms per track per call, kept inline on purpose.
        assert session is not None  # media is taken here only once the stream has started
        sequence, track_name, timestamp_ms, payload = values
        if track_name not in stream.tracks:
            stream.bad += 1
            twilio.counters["messages_bad"] += 1
            stream.note("track", "%s: media on a track not started", stream.where())
            continue
        numbering = stream.numbering
        if sequence == numbering.last_seq + 1:
            numbering.last_seq, numbering.jump_seq = sequence, -1
        elif not stream.in_order(sequence):
            session.dropped()
            continue
        track = TRACK_CALLER if track_name == "inbound" else TRACK_AGENT
        call_ms = stream.base_ms + numbering.media_ms(track, timestamp_ms, len(payload))
        session.audio(track, call_ms, payload)
        call_time = session.at(call_ms / 1000)
        if stream.playing and call_time >= stream.pace_at:
            await stream.pace(call_time)
        deadline = session.flow.deadline
        if deadline is not None and call_time >= deadline:
            await stream.run(await session.tick(call_time))


async def _dispatch(stream: _Stream, message: object) -> bool:
    """Act on one message; False when the stream is finished."""
    session = stream.session
    if isinstance(message, tw.Media):  # with a session, media never gets here: see _read_stream
        await stream.close(tw.CLOSE_PROTOCOL_ERROR, "media before start")
        return False
    if isinstance(message, tw.Start):
        if session is not None:
            await stream.close(tw.CLOSE_PROTOCOL_ERROR, "second start")
            return False
        if not await stream.admit(message):
            if stream.held_elsewhere and stream.twilio.relay is not None:
                stream.closed_by_us = True  # the call's holder answers for it
                args = (stream.request, stream.ws, stream.holder_url, stream.first)
                await stream.twilio.relay.stream(*args, max_msg_size=tw.MAX_MESSAGE_BYTES)
            return False
        session = stream.session
        assert session is not None and stream.call is not None
        stream.first.clear()  # kept only to relay with the start; not for the stream's life
        log.info("call %s: %s stream %s open", stream.call.call_id, stream.kind, message.stream_sid)
        if stream.kind == "consent":
            await stream.run(await session.start())
        return True
    if isinstance(message, tw.Connected):
        return True
    if session is None or stream.call is None:
        await stream.close(
            tw.CLOSE_PROTOCOL_ERROR, f"{type(message).__name__.lower()} before start"
        )
        return False
    if isinstance(message, tw.Dtmf):
        if stream.in_order(message.sequence):
            event = DigitPressed(at=session.now_event(), digit=message.digit)
            await stream.run(await session.handle(event))
        return True
    if isinstance(message, tw.Mark):
        play_id = tw.played(message)
        if stream.in_order(message.sequence) and play_id is not None:
            finished = PromptFinished(at=session.now_event(), play_id=play_id)
            await stream.run(await session.handle(finished))
        return True
    if isinstance(message, tw.Stop):
        # The recording is closed now; the status callback (or expiry) writes the call's row.
        reason = "caller hung up" if stream.kind == "consent" else "recording stream stopped"
        await stream.call.media_ended(reason)
        stream.closed_by_us = True
        if not stream.ws.closed:
            await stream.ws.close(code=tw.CLOSE_NORMAL)
        return False
    if isinstance(message, tw.Unknown):
        stream.twilio.counters["messages_unknown"] += 1
        what = (stream.where(), message.event)
        stream.note("unknown", "%s: unknown event %r ignored", *what, level=logging.INFO)
    return True


async def shutdown(app: web.Application) -> None:
    """Stop taking calls and close every stream, which finalises every open recording."""
    twilio = app.get(TWILIO)
    if twilio is None:
        return
    twilio.accepting = False
    for ws in list(twilio.sockets):
        await ws.close(code=tw.CLOSE_GOING_AWAY, message=b"service shutting down")
    for call in twilio.calls.calls(PLATFORM):
        await twilio.calls.finish(call, "service shutting down")


def add_routes(app: web.Application, *, relay_listener: bool = False) -> None:
    """The Twilio routes; on the relay listener (ivr/calls/relay.py) without the shutdown hook,
    which the service's own application runs."""
    app.router.add_post("/twilio/voice", voice)
    app.router.add_post("/twilio/continue", continue_call)
    app.router.add_post("/twilio/status", status)
    app.router.add_post("/twilio/stream-status", stream_status)
    for kind in ("consent", "recording"):
        handler = partial(_stream_handler, kind=kind)
        app.router.add_get(f"/twilio/stream/{kind}", handler)  # URLs of earlier versions
        app.router.add_get(f"/twilio/stream/{kind}/{{holder}}", handler)
    if not relay_listener:
        app.on_shutdown.append(shutdown)
