"""One caller on Asterisk: the channel, and everything of ours around it.

For each caller entering the Stasis app: answer; create a mixing bridge; create an external-media
channel (RTP/PCMU over UDP) to a port of ours; wait until that channel has entered the Stasis
application (its own ``StasisStart``: Asterisk mostly answers ``POST /channels/externalMedia``
before the channel is in the app, and a bridge refuses it until then with 422); bridge caller and
external media; then play prompts by sending paced RTP to the address Asterisk announced, take
keys from ``ChannelDtmfReceived`` (and RFC 4733 packets should any arrive), and record the RTP we
receive (the bridge's mix: the caller, and the agent once connected) through the vault. After the
decision a line with ``forward_to`` gets its agent originated into the bridge; a line without one
records the caller until hang-up or its maximum.

When set-up fails, the caller is handed back to the dialplan after ``Stasis()`` with
``IVR_ERROR=setup_failed`` (hung up should that fail too), and the call's row says why.

Each call has one task that takes its work (RTP, events, timers) from a queue, so the flow sees
events in order and one call's trouble stays in that call.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ivr.calls import Call, CallSession, carry_out
from ivr.calls.rtp import WAKE_DIGIT, RtpLeg
from ivr.config import normalise_number
from ivr.consent import Command, DigitPressed, PromptFinished
from ivr.platforms.asterisk import ari, busy
from ivr.platforms.asterisk.rest import AriHttpError
from media.prompts import Prompt

if TYPE_CHECKING:
    from ivr.platforms.asterisk.app import AriApplication

log = logging.getLogger(__name__)

PLATFORM = "asterisk"
MAX_QUEUE = 2000  # per call: about 40 s of RTP; beyond that a call is hopelessly stuck
AGENT_RING_SECONDS = 30
# How long the external-media channel may take to enter the app after Asterisk created it.
# Measured on Asterisk 22: a few ms idle, tens of ms under load; 5 s means Asterisk is stuck.
MEDIA_STASIS_TIMEOUT = 5.0


class SetupFailed(Exception):
    """A call's media could not be connected; the message says why, for its row and the log."""


@dataclass(eq=False)
class AriCall:
    """One caller's channel and everything of ours around it: RTP leg, bridge, external
    media, agent leg, the prompt being played. The ``Wire`` of its ``Call``."""

    app: AriApplication
    caller: ari.Channel
    key: str
    args: tuple[str, ...] = ()
    call: Call | None = None  # in the registry once the line is known
    handed_back: bool = False  # returned to the dialplan: not ours to hang up
    agent_answered: bool = False
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # the caller hung up
    media_entered: asyncio.Future[None] | None = None
    bridge_id: str = ""
    media_id: str = ""
    agent_id: str | None = None
    rtp: RtpLeg = field(init=False)
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=lambda: asyncio.Queue(MAX_QUEUE))
    task: asyncio.Task[None] | None = None
    finished: bool = False
    caller_gone: bool = False
    early_end: str | None = None  # why it ended, before it was in the registry
    reported: dict[str, str] = field(default_factory=dict)  # the outcome variables set

    def __post_init__(self) -> None:
        self.rtp = RtpLeg(self.post, name=f"ari:{self.caller.id}", sweeper=self.app.rtp_batches)

    @property
    def session(self) -> CallSession | None:
        return self.call.session if self.call is not None else None

    @property
    def label(self) -> str:
        return self.call.call_id if self.call is not None else f"ari:{self.caller.id}"

    def ended_by(self, reason: str) -> None:
        if self.call is not None:
            self.call.ended_by(reason)
        elif self.early_end is None:
            self.early_end = reason

    def caller_left(self, reason: str) -> None:
        self.caller_gone = True
        self.ended_by(reason)
        self.gone.set()
        self.post("end", reason)

    # -- input from the events loop and the RTP leg -------------------------------------------
    def post(self, kind: str, value: object = None) -> None:
        try:
            self.queue.put_nowait((kind, value))
        except asyncio.QueueFull:
            self.app.counters["call_queue_overflow"] += 1

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
        line = ari.line_for(self.caller, self.args, app.config.line_for)
        if line is None:
            app.counters["calls_unknown_line"] += 1
            log.info("ari channel %s: no line for this call; hanging up", self.caller.id)
            await app.rest_quiet(ari.hang_up(self.caller.id, "unallocated"))
            self.handed_back = True
            return False
        number = self.caller.caller_number
        caller = normalise_number(number) if number.startswith(("+", "00")) else None
        if busy.full(app.registry, app.config.limits.max_calls):
            self.handed_back = await busy.turn_away(app, PLATFORM, self.caller.id, line, caller)
            return False
        call = await app.registry.open(
            platform=PLATFORM, platform_call_id=self.caller.id, line=line, caller=caller
        )
        call.attach(self, "channel")  # the caller's channel feeds it until _finish
        if self.early_end is not None:
            call.ended_by(self.early_end)
        self.call = call
        self.rtp.name = call.call_id
        app.counters["calls"] += 1
        try:
            await self._connect_media()
        except SetupFailed as exc:
            await self._setup_failed(str(exc))
            return False
        # The call's clock starts here: the caller can hear us from now on.
        session = app.registry.begin(call, tracks=("mixed",))
        self.rtp.begin(session)  # with what the bridge carried before this moment
        await self._run(await session.start())
        return True

    async def _connect_media(self) -> None:
        """Answer, bridge, external media, in the order real Asterisk needs (docs/asterisk.md,
        "What happens to a call"). Raises SetupFailed with the reason."""
        app = self.app
        settings = app.settings
        try:
            port = await app.rtp_ports.bind(self.rtp)
        except OSError as exc:
            app.counters["rtp_ports_exhausted"] += 1
            raise SetupFailed(f"no RTP port free ({exc})") from None
        self.bridge_id = ari.own_id(app.instance, self.key, ari.BRIDGE)
        self.media_id = ari.own_id(app.instance, self.key, ari.MEDIA)
        # Registered before the request: the channel's StasisStart may even arrive before the
        # response to POST /channels/externalMedia is read.
        self.media_entered = asyncio.get_running_loop().create_future()
        app.own_channels[self.media_id] = self
        started = app.wall()
        try:
            await app.rest(ari.answer(self.caller.id))
            await app.rest(ari.create_bridge(self.bridge_id))
            media = await app.rest(
                ari.external_media(settings.app, self.media_id, settings.rtp_host, port)
            )
            self.rtp.peer = ari.rtp_peer(media or {})
            await self._media_in_stasis()
            await app.rest(ari.add_to_bridge(self.bridge_id, [self.caller.id, self.media_id]))
        except (AriHttpError, ari.AriEventError) as exc:
            raise SetupFailed(str(exc)) from None
        log.debug("call %s: media connected in %.1f ms", self.label, (app.wall() - started) * 1e3)

    async def _media_in_stasis(self) -> None:
        """Wait for the external-media channel's StasisStart (bounded), or the caller leaving."""
        entered = self.media_entered
        assert entered is not None
        if entered.done():
            return
        gone: asyncio.Future[Any] = asyncio.ensure_future(self.gone.wait())
        try:
            await asyncio.wait(
                {entered, gone}, timeout=MEDIA_STASIS_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            gone.cancel()
        if entered.done():
            return
        if self.caller_gone:
            raise SetupFailed("the caller hung up while the call was being set up")
        self.app.counters["media_stasis_timeouts"] += 1
        raise SetupFailed(
            f"the external-media channel {self.media_id} did not enter the Stasis application "
            f"within {MEDIA_STASIS_TIMEOUT:g} s"
        )

    async def _setup_failed(self, reason: str) -> None:
        """Set-up did not complete. A caller who hung up meanwhile is just a hang-up; anyone
        else is handed back to the dialplan (IVR_ERROR=setup_failed), not left in silence."""
        if self.caller_gone:
            log.info("call %s: caller hung up during set-up", self.label)
            return
        assert self.call is not None
        self.app.counters["calls_setup_failed"] += 1
        self.call.setup_error = reason
        self.ended_by(f"set-up failed: {reason}")
        log.error(
            "call %s: set-up failed: %s; handing the caller back to the dialplan",
            self.label,
            reason,
        )
        self.handed_back = await self.app.hand_back(self.caller.id, "setup_failed")

    async def _loop(self) -> None:
        session = self.session
        assert session is not None
        queue = self.queue
        while not self.finished:
            if not queue.empty():  # the common case under load: no timer, no task
                kind, value = queue.get_nowait()
            else:
                timeout = self.rtp.wait_seconds(session)
                if timeout is None:
                    kind, value = await queue.get()
                else:
                    try:
                        async with asyncio.timeout(timeout):
                            kind, value = await queue.get()
                    except TimeoutError:
                        kind, value = "timer", None
            if kind in ("digit", WAKE_DIGIT):
                await self._digit(session, value)
            elif kind == "agent":
                await self._agent_entered(value)
            elif kind == "end":
                await self.rtp.drain()
                await self._finish(value)
                return
            await self._pump(session)

    async def _pump(self, session: CallSession) -> None:
        """Send the prompt frames that are due, and give the flow its ticks."""
        now = session.now_event()
        finished = self.rtp.pump(now)
        if finished is not None:
            await self._run(await session.handle(PromptFinished(at=now, play_id=finished)))
        await self._run(await session.tick(now))

    async def _digit(self, session: CallSession, digit: str) -> None:
        now = session.now_event()
        if self.rtp.new_digit(digit, now):
            await self._run(await session.handle(DigitPressed(at=now, digit=digit)))

    async def _run(self, commands: list[Command]) -> None:
        """Once the flow has decided, tell the PBX, as channel variables its dialplan or CDR can
        use: IVR_CONSENT_DECISION, IVR_LAWFUL_BASIS and, once recording, IVR_RECORDING_ID. Then
        carry out the commands."""
        session = self.session
        assert session is not None and self.call is not None
        if session.decision is not None:
            news = ari.outcome_variables(
                session.decision.value,
                session.line.lawful_basis.value,
                session.recording.id if session.recording else "",
                told=self.reported,
            )
            for name, value in news.items():
                if not self.caller_gone:
                    self.reported[name] = value
                    await self.app.rest_quiet(ari.set_variable(self.caller.id, name, value))
        await carry_out(self.call, self, commands)

    # -- the Wire ---------------------------------------------------------------------------
    async def play(self, prompt: Prompt, play_id: int) -> None:
        session = self.session
        assert session is not None
        self.rtp.play(prompt, play_id, session.call_time())

    async def stop_playing(self) -> None:
        self.rtp.stop_playing()

    async def hand_off(self, recording: bool) -> None:
        call = self.call
        assert call is not None
        forward = call.line.forward_to
        if forward is None:
            if not recording:  # a message line whose caller refused: nothing to do
                await self.hang_up("nothing to record")
            return
        self.agent_id = ari.own_id(self.app.instance, self.key, ari.AGENT)
        self.app.own_channels[self.agent_id] = self
        try:
            await self.app.rest(
                ari.originate(
                    self.app.settings.app,
                    self.agent_id,
                    self.app.settings.endpoint(forward),
                    call.line.number,
                    AGENT_RING_SECONDS,
                )
            )
        except AriHttpError as exc:
            self.app.counters["ari_errors"] += 1
            log.error("call %s: could not reach the agent: %s", call.call_id, exc)

    async def hang_up(self, reason: str) -> None:
        log.info("call %s: hanging up (%s)", self.label, reason)
        self.ended_by(f"service hung up: {reason}")
        await self.app.rest_quiet(ari.hang_up(self.caller.id))

    async def _agent_entered(self, channel_id: str) -> None:
        try:
            await self.app.rest(ari.answer(channel_id))
            await self.app.rest(ari.add_to_bridge(self.bridge_id, [channel_id]))
            log.info("call %s: agent connected", self.label)
        except AriHttpError as exc:
            self.app.counters["ari_errors"] += 1
            log.error("call %s: agent could not join: %s", self.label, exc)

    async def _finish(self, reason: str) -> None:
        """Everything a call leaves behind is closed here, exactly once."""
        if self.finished:
            return
        self.finished = True
        app = self.app
        call, session = self.call, self.session
        self.rtp.flush()
        if call is not None:
            await call.detach(self, lost=None)
            await app.registry.finish(call, reason)
        if session is not None:
            app.counters["calls_completed"] += 1
            app.counters["frames_stored"] += session.stats.frames_stored
            app.counters["frames_lost"] += session.stats.frames_lost
        for channel_id in (self.agent_id, self.media_id):
            if channel_id:
                await app.rest_quiet(ari.hang_up(channel_id))
        if self.bridge_id:
            await app.rest_quiet(ari.destroy_bridge(self.bridge_id))
        if not self.caller_gone and not self.handed_back:
            await app.rest_quiet(ari.hang_up(self.caller.id))
        await self.rtp.close()
        app.counters.update(self.rtp.counters())
        self.rtp.release()
        app.forget(self)
