"""One ``CallSession`` joins a call's consent flow to its recording.

Platforms (Twilio, Asterisk) translate wire messages into flow events and hand them to
``CallSession.handle``; the session carries out the recording commands itself (start, stop,
discard, against the vault) and returns the rest (play, stop playing, hand off, hang up), which
``ivr.calls.wire.carry_out`` puts on the platform's wire. Audio goes through ``audio()``, the
single gate between a call and the vault: a frame is stored only while the flow says recording is
lawful.

Call time, on every platform, is seconds since the session began. Audio carries its own time
(the platform's media clock); an event that carries none (a key, a mark, a timer) happens at
``call_time()``: the latest media time or the wall time since the call began, whichever is
later. Media may lag the wall clock a little, or run ahead of it (the simulator's virtual time);
taking the later of the two never moves time backwards and never waits on a stalled stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ivr.capabilities import Capabilities
from ivr.config import Line
from ivr.consent import (
    CallEnded,
    CallStarted,
    Command,
    ConsentFlow,
    Decision,
    Event,
    FlowPolicy,
    PromptInfo,
    StartRecording,
    StopRecording,
    Tick,
)
from media.prompts import Prompt
from storage.catalog import RecordingRow
from storage.errors import VaultError
from storage.vault import Recording, RecordingNotStarted, Vault

log = logging.getLogger(__name__)

TRACK_CALLER, TRACK_AGENT = 0, 1
MAX_PENDING_FRAMES = 3000  # 30 s of two tracks while a recording opens; never reached in practice
# The timer rule. A call needs a Tick when the flow's deadline passes; media normally brings the
# call there (every frame moves call time), so a platform arms a wall-clock timer only when the
# deadline is near (a timer per message would cost more than the call), and lets it fire a
# little after the deadline so that media in flight gets there first.
NEAR_DEADLINE_SECONDS = 30.0
TICK_GRACE_SECONDS = 0.05
# A frame further into the recording than the line's max_recording_seconds plus this is a
# platform's clock gone wrong (one timestamp of 4e9 ms), not audio: it is not stored.
RECORDING_OVERRUN_MS = 10_000


def flow_policy(line: Line, platform: Capabilities) -> FlowPolicy:
    return FlowPolicy(
        policy_id=line.policy_id,
        policy_version=line.policy_version,
        lawful_basis=line.lawful_basis,
        consent_mode=line.consent_mode,
        purpose=line.purpose,
        language=line.language,
        accept_key=line.accept_key,
        decline_key=line.decline_key,
        withdraw_key=line.withdraw_key,
        prompt_timeout_seconds=line.prompt_timeout_seconds,
        withdraw=line.withdraw_channel(platform),
        discard_on_withdraw=line.discard_on_withdraw,
        max_recording_seconds=line.max_recording_seconds,
        stays_on_stream=line.forward_to is None,
        plays_after_hand_off=platform.plays_after_hand_off,
    )


@dataclass
class CallStats:
    frames_stored: int = 0
    frames_refused: int = 0  # arrived while recording was not allowed: dropped by design
    frames_lost: int = 0  # should have been stored but could not be (a failed disk, overflow)
    frames_pending: int = 0  # waiting for the recording to open
    vault_errors: int = 0  # the vault refused a write (a frame, the recording's start)

    @property
    def frames_received(self) -> int:
        return self.frames_stored + self.frames_refused + self.frames_lost + self.frames_pending


@dataclass(slots=True)  # one per live call: slots, not a dict of some thirty attributes
class CallSession:
    vault: Vault
    line: Line
    call_id: str
    platform_call_id: str
    prompts: Mapping[str, Prompt]
    # What the flow is told of them: the prompt library's, shared by every call on the line.
    prompt_infos: Mapping[str, PromptInfo]
    started_wall: datetime
    clock: Callable[[], datetime]
    platform: Capabilities
    setup_seconds: float | None = None  # from the platform's first word to now (evidence)
    # Set by the platform while audio the recording should hold is not arriving (Twilio: the
    # recording stream asked for but not connected, or broken): the recording then closes as
    # incomplete or failed with this reason, never as complete.
    media_failure: str | None = None
    # The vault could not start the recording (a full disk): the call goes on without it,
    # and its frames are counted as lost, never buffered.
    recording_failure: str | None = None
    failed_recording_id: str | None = None  # its row says failed (once the disk takes it)
    flow: ConsentFlow = field(init=False)
    recording: Recording | None = None
    row: RecordingRow | None = None
    stats: CallStats = field(default_factory=CallStats)
    ended: bool = False
    tracks: tuple[str, ...] = ()
    _base_ms: int | None = None
    _max_offset_ms: int = field(init=False)
    _pending: list[tuple[int, int, bytes]] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    now: float = 0.0  # the latest call time seen (seconds); only ever moves forward, via at()
    # Set by a platform that takes audio in batches (ivr/calls/rtp.py): takes what is waiting,
    # so that the flow sees no event before the audio that arrived before it.
    before_event: Callable[[], None] | None = None
    _ending: asyncio.Future[list[Command]] | None = None
    _closing: asyncio.Future[RecordingRow] | None = None
    # ``timer()`` asks for no timer until any of these changes: the deadline, media time
    # reaching ``_quiet_now`` or the monotonic clock ``_quiet_until`` (see ``timer``).
    monotonic: Callable[[], float] = time.monotonic
    _quiet_deadline: float | None = None
    _quiet_now: float = 0.0
    _quiet_until: float = 0.0

    def __post_init__(self) -> None:
        forwards = self.line.forward_to is not None
        self.flow = ConsentFlow(
            flow_policy(self.line, self.platform),
            self.prompt_infos,
            self.started_wall,
            setup_seconds=self.setup_seconds,
        )
        if not self.tracks:  # a platform with separate legs; Asterisk passes its one mix
            self.tracks = ("caller", "agent") if forwards else ("caller",)
        self._max_offset_ms = self.line.max_recording_seconds * 1000 + RECORDING_OVERRUN_MS

    @property
    def decision(self) -> Decision | None:
        return self.flow.decision

    @property
    def recording_allowed(self) -> bool:
        return self.flow.recording

    def at(self, call_time: float) -> float:
        """A monotonic call time: platforms' clocks may step back a little between streams."""
        if call_time > self.now:
            self.now = call_time
        return self.now

    # -- events ----------------------------------------------------------------------------
    async def start(self) -> list[Command]:
        return await self.handle(CallStarted(at=0.0))

    async def handle(self, event: Event) -> list[Command]:
        """Feed the flow; do what concerns the recording; return what concerns the wire."""
        if self.before_event is not None:
            self.before_event()
        async with self._lock:
            commands = self.flow.handle(event)
            out: list[Command] = []
            for command in commands:
                if isinstance(command, StartRecording):
                    await self._open(dict(command.evidence))
                elif isinstance(command, StopRecording):
                    await self._close(command)
                else:
                    out.append(command)
            return out

    async def tick(self, call_time: float) -> list[Command]:
        deadline = self.flow.deadline
        if deadline is None or call_time < deadline:
            return []
        return await self.handle(Tick(at=self.at(call_time)))

    async def end(self, reason: str) -> RecordingRow | None:
        """The call is over (hang-up, stream lost, status callback). Idempotent.

        Shielded: when the handler that noticed the end is cancelled (its client vanished),
        the recording is still finalised, and every caller waits for the same outcome.
        """
        if self._ending is None:
            self.ended = True
            self._ending = asyncio.ensure_future(self.handle(CallEnded(at=self.now, reason=reason)))
        await asyncio.shield(self._ending)
        if self._closing is not None:
            with contextlib.suppress(VaultError, OSError):
                self.row = await asyncio.shield(self._closing)
        return self.row

    # -- audio -----------------------------------------------------------------------------
    def audio(self, track: int, call_ms: int, payload: bytes) -> None:
        """One frame at ``call_ms`` milliseconds of call time; stored only while recording is
        lawful. The recording's own timeline starts at its first frame."""
        rec = self.recording
        base = self._base_ms
        if rec is not None and base is not None and self.flow.recording:  # the hot path
            offset = call_ms - base
            if offset > self._max_offset_ms:
                self._beyond_maximum(offset)
                return
            try:
                # A frame a moment before the first one (the other track) is put at zero.
                rec.append(track, offset if offset > 0 else 0, payload)
            except (VaultError, ValueError) as exc:
                self._lost(exc)
                return
            self.stats.frames_stored += 1
            return
        if not self.flow.recording:
            self.stats.frames_refused += 1
        elif self.recording_failure is not None:
            self.stats.frames_lost += 1
        elif rec is None:  # the recording is being opened: keep the frame until it is
            if len(self._pending) < MAX_PENDING_FRAMES:
                self._pending.append((track, call_ms, payload))
                self.stats.frames_pending += 1
            else:
                self.stats.frames_lost += 1
        else:
            self._base_ms = call_ms
            self.audio(track, call_ms, payload)

    def audio_run(self, track: int, call_ms: int, step_ms: int, payloads: Sequence[bytes]) -> None:
        """Frames ``payloads``, the first at ``call_ms`` and each next one ``step_ms`` later:
        what ``audio`` would do with each, with the gate checked once (the flow changes only
        through ``handle``, never during a run) and the recording's frames taken by the writer
        a run at a time."""
        rec = self.recording
        base = self._base_ms
        n = len(payloads)
        offset = call_ms - base if base is not None else -1
        if (
            rec is None
            or offset < 0  # before the recording's start (put at zero) or none yet
            or offset + (n - 1) * step_ms > self._max_offset_ms
            or not self.flow.recording
        ):
            for i in range(n):
                self.audio(track, call_ms + i * step_ms, payloads[i])
            return
        stats, append_run = self.stats, rec.append_run
        i = 0
        while i < n:
            taken = append_run(track, offset + i * step_ms, step_ms, payloads, i)
            stats.frames_stored += taken
            i += taken
            if i < n:  # starts a chunk, seals one or is refused: ``audio`` knows what to do
                self.audio(track, call_ms + i * step_ms, payloads[i])
                i += 1

    def dropped(self) -> None:
        """A frame the platform dropped before ``audio()`` (out of order, a broken sequence
        number): lost if the recording should have held it, refused if not."""
        if self.flow.recording:
            self.stats.frames_lost += 1
        else:
            self.stats.frames_refused += 1

    def _beyond_maximum(self, offset_ms: int) -> None:
        self.stats.frames_lost += 1
        if self.stats.frames_lost == 1:
            log.warning(
                "call %s: frame %d ms into the recording, past the line's maximum of %d s: "
                "not stored",
                self.call_id,
                offset_ms,
                self.line.max_recording_seconds,
            )

    def _lost(self, exc: Exception) -> None:
        self.stats.frames_lost += 1
        self.stats.vault_errors += 1
        if self.recording is not None:
            self._count_dropped(self.recording)
        if self.stats.frames_lost == 1:
            log.error("call %s: frame not stored: %s", self.call_id, exc)

    def _count_dropped(self, rec: Recording) -> None:
        """The frames of a chunk whose write failed (mid-call, or the last one at the close)
        were counted as stored when the writer took them: they are lost."""
        dropped = rec.take_dropped()
        self.stats.frames_stored -= dropped
        self.stats.frames_lost += dropped

    def call_time(self) -> float:
        """The call time now (see the module docstring): the latest media time or the wall
        time since the call began, whichever is later."""
        wall = (self.clock() - self.started_wall).total_seconds()
        return max(self.now, wall)

    def now_event(self) -> float:
        """The call time of an event that carries none of its own (a key, a mark), recorded
        as the session's latest time."""
        return self.at(self.call_time())

    def timer(self) -> float | None:
        """Seconds of wall time to wait before the next Tick is due (the timer rule above), or
        None when no deadline is near enough to need a timer."""
        deadline = self.flow.deadline
        if deadline is None:
            return None
        # Asked before every message a platform waits for: while the deadline is far, the
        # answer stays "none" until call time could have come near it, by media time or by
        # the wall clock (the monotonic one stands in, as reading the wall clock costs more
        # than the rest of a message's path).
        if (
            deadline == self._quiet_deadline
            and self.now < self._quiet_now
            and self.monotonic() < self._quiet_until
        ):
            return None
        remaining = deadline - self.call_time()
        if remaining >= NEAR_DEADLINE_SECONDS:
            self._quiet_deadline = deadline
            self._quiet_now = deadline - NEAR_DEADLINE_SECONDS
            self._quiet_until = self.monotonic() + remaining - NEAR_DEADLINE_SECONDS
            return None
        return max(remaining, 0.0) + TICK_GRACE_SECONDS

    # -- recording -------------------------------------------------------------------------
    async def _open(self, evidence: dict[str, Any]) -> None:
        line = self.line
        try:
            self.recording = await self.vault.astart_recording(
                tenant=line.tenant,
                call_id=self.call_id,
                lawful_basis=line.lawful_basis,
                purpose=line.purpose,
                policy_id=line.policy_id,
                policy_version=line.policy_version,
                consent_evidence=evidence,
                tracks=self.tracks,
                retention_until=self.clock() + timedelta(days=line.retention_days),
            )
        except (VaultError, OSError) as exc:
            log.error("call %s: recording could not start: %s", self.call_id, exc)
            self.stats.vault_errors += 1
            self.recording_failure = str(exc) or type(exc).__name__
            if isinstance(exc, RecordingNotStarted):
                self.failed_recording_id = exc.recording_id
            self.stats.frames_lost += len(self._pending)
            self.stats.frames_pending = 0
            self._pending.clear()
            return
        log.info(
            "call %s: recording %s started (%s, %s)",
            self.call_id,
            self.recording.id,
            line.lawful_basis.value,
            self.flow.decision.value if self.flow.decision else "-",
        )
        pending, self._pending = self._pending, []
        self.stats.frames_pending = 0
        for frame in pending:
            self.audio(*frame)

    async def _close(self, command: StopRecording) -> None:
        rec, self.recording = self.recording, None
        self.stats.frames_refused += len(self._pending)
        self.stats.frames_pending = 0
        self._pending.clear()
        if rec is None:
            return
        evidence = dict(command.evidence)
        if command.discard:
            op = rec.adiscard(reason=command.reason, consent_evidence=evidence)
        else:
            if self.media_failure is not None:
                log.warning("call %s: recording %s: %s", self.call_id, rec.id, self.media_failure)
            op = rec.aclose(
                reason=command.reason, consent_evidence=evidence, failure=self.media_failure
            )
        # Finalising must not be undone by a cancelled handler: run it as its own task.
        self._closing = asyncio.ensure_future(op)
        try:
            self.row = await asyncio.shield(self._closing)
        except (VaultError, OSError) as exc:
            log.error("call %s: recording %s not finalised: %s", self.call_id, rec.id, exc)
            return
        finally:
            self._count_dropped(rec)
        log.info(
            "call %s: recording %s %s (%s; %d frames)",
            self.call_id,
            rec.id,
            self.row.status.value,
            command.reason,
            self.stats.frames_stored,
        )

    def summary(self) -> dict[str, Any]:
        row = self.row
        rec_id = row.id if row else (self.recording.id if self.recording else None)
        status = row.status.value if row else None
        if rec_id is None and self.recording_failure is not None:
            rec_id, status = self.failed_recording_id, "failed"
        return {
            "call_id": self.call_id,
            "decision": self.flow.decision.value if self.flow.decision else None,
            "recording_id": rec_id,
            "recording_status": status,
            "lawful_basis": self.line.lawful_basis.value,
            "frames_received": self.stats.frames_received,
            "frames_stored": self.stats.frames_stored,
            "frames_lost": self.stats.frames_lost,
        }
