"""The calls in progress, on every platform: opened, found, finished exactly once, expired.

A ``Call`` is what the service knows of one call whatever carries it: the catalog row, the
line, the ``CallSession`` once the caller can hear us, why it ended. Platforms keep their own
wire state (a Twilio stream, an Asterisk channel and RTP port) and look calls up here by their
own id. Finishing is the one place a call's end is written: the session ends (the recording is
closed), the row gets its end time, outcome and reason, the call leaves the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from ivr.calls.session import CallSession
from ivr.capabilities import PLATFORMS
from ivr.config import Line
from ivr.prompt_library import PromptLibrary
from ivr.supervision import in_thread
from storage.catalog import RecordingRow
from storage.files import utc_iso
from storage.vault import Vault

if TYPE_CHECKING:
    from ivr.calls.wire import Wire

log = logging.getLogger(__name__)

# A call nothing feeds any more (a Twilio call after hand-off without recording waits for its
# status callback) is forgotten once it has been silent this long beyond its line's longest
# recording: the platform never said goodbye.
EXPIRY_MARGIN_SECONDS = 600.0
ORPHAN_REASON = "the service stopped during the call; closed at the next start"
DEAD_HOLDER_REASON = "the process holding the call stopped; closed by another"
# How often catalog writes the disk refused (a full disk) are tried again.
RETRY_SECONDS = 5.0


@dataclass(eq=False)
class Call:
    platform: str
    platform_call_id: str
    call_id: str  # the catalog's
    line: Line
    session: CallSession | None = None  # from the moment the caller can hear us
    end_reason: str | None = None  # the first cause of the end, never overwritten
    setup_error: str | None = None  # set-up failed: the flow never started
    hung_up: bool = False  # the service hung the caller up (the flow's HangUp)
    attached: int = 0  # streams or channels feeding the call now
    streams: set[str] = field(default_factory=set)  # media legs admitted so far (each kind once)
    last_heard: float = 0.0  # monotonic time of the platform's latest word
    wire: Wire | None = None  # what reaches the caller now, for commands from outside the call
    opened: float = 0.0  # monotonic time the platform announced the call
    _finishing: asyncio.Future[RecordingRow | None] | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self._finishing is not None

    def ended_by(self, reason: str) -> None:
        """Note why the call ends; the first cause wins (our own hang-up of the caller is
        followed by the platform's hang-up report, which must not overwrite it)."""
        if self.end_reason is None:
            self.end_reason = reason

    def attach(self, wire: Wire, kind: str) -> None:
        """A leg of ``kind`` (a media stream, a channel) feeds the call from now on, and
        commands go out on it."""
        self.streams.add(kind)
        self.attached += 1
        self.wire = wire

    async def detach(self, wire: Wire, *, lost: str | None) -> None:
        """The leg stopped feeding the call; ``lost`` says why when it went away without a
        goodbye, which ends the call's media as far as anyone can tell (``media_ended``)."""
        self.attached -= 1
        if self.wire is wire:
            self.wire = None
        if lost is not None:
            await self.media_ended(lost)

    async def media_ended(self, reason: str) -> None:
        """No more audio will come: the recording is closed now; the call's row is written when
        it finishes (the platform's goodbye, or expiry)."""
        self.ended_by(reason)
        if self.session is not None and not self.session.ended:
            await self.session.end(reason)

    @property
    def outcome(self) -> str:
        if self.session is not None and self.session.decision is not None:
            return self.session.decision.value
        return "setup_failed" if self.setup_error else "hung_up"


class CallObserver(Protocol):
    """Told of every call's set-up and end (the service's /metrics)."""

    def began(self, call: Call) -> None: ...

    def finished(self, call: Call, row: RecordingRow | None) -> None: ...


class CallRegistry:
    def __init__(
        self,
        vault: Vault,
        prompts: PromptLibrary,
        *,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.vault = vault
        self.prompts = prompts
        self.clock = clock
        self.monotonic = monotonic
        self.observers: list[CallObserver] = []
        self._calls: dict[tuple[str, str], Call] = {}
        self._opening = 0  # calls between open()'s start and their registration
        self.retry_seconds = retry_seconds
        self._retry: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Calls in progress, counting those being opened: the call cap's count
        (ivr/calls/capacity.py), exact however many calls arrive at once."""
        return len(self._calls) + self._opening

    def get(self, platform: str, platform_call_id: str) -> Call | None:
        return self._calls.get((platform, platform_call_id))

    def by_call_id(self, call_id: str) -> Call | None:
        """A live call by the catalog's id (the id the API and CLI name calls by)."""
        return next((c for c in self._calls.values() if c.call_id == call_id), None)

    def calls(self, platform: str | None = None) -> list[Call]:
        return [c for c in self._calls.values() if platform is None or c.platform == platform]

    async def open(
        self, *, platform: str, platform_call_id: str, line: Line, caller: str | None
    ) -> Call:
        """Register a call (its catalog row: ``caller`` is stored sealed). The call goes on
        whether or not the disk takes its row now (kept and written later, see
        ``storage/pending.py``)."""
        self._opening += 1  # counted from here, before the first await
        try:
            call_id = await asyncio.to_thread(
                self.vault.open_call,
                tenant=line.tenant,
                platform=platform,
                platform_call_id=platform_call_id,
                line=line.policy_id,
                caller=caller,
                defer=True,
            )
        finally:
            self._opening -= 1
        self.retry_kept_writes()
        now = self.monotonic()
        call = Call(platform, platform_call_id, call_id, line, last_heard=now, opened=now)
        self._calls[(platform, platform_call_id)] = call
        log.info(
            "call %s: %s %s, policy %s (%s, %s)",
            call_id,
            platform,
            platform_call_id,
            line.policy_id,
            line.lawful_basis.value,
            line.consent_mode.value,
        )
        return call

    def begin(self, call: Call, *, tracks: tuple[str, ...] = ()) -> CallSession:
        """The caller can hear us from now on: the call's clock starts."""
        line = call.line
        call.session = CallSession(
            vault=self.vault,
            line=line,
            call_id=call.call_id,
            platform_call_id=call.platform_call_id,
            prompts=self.prompts.for_call(line, call.platform),
            prompt_infos=self.prompts.infos_for_call(line, call.platform),
            started_wall=self.clock(),
            clock=self.clock,
            monotonic=self.monotonic,
            platform=PLATFORMS[call.platform],
            setup_seconds=round(self.monotonic() - call.opened, 3),
            tracks=tracks,
        )
        for observer in self.observers:
            observer.began(call)
        return call.session

    def heard(self, call: Call) -> None:
        call.last_heard = self.monotonic()

    async def finish(self, call: Call, reason: str) -> RecordingRow | None:
        """End the call exactly once, whoever asks and however often; every caller waits for
        the same result. Shielded: a cancelled handler cannot leave a call half finished."""
        call.ended_by(reason)
        if call._finishing is None:
            call._finishing = asyncio.ensure_future(self._finish(call))
        return await asyncio.shield(call._finishing)

    async def _finish(self, call: Call) -> RecordingRow | None:
        row = None
        if call.session is not None:
            row = await call.session.end(call.end_reason or "ended")
        self._calls.pop((call.platform, call.platform_call_id), None)
        await asyncio.to_thread(
            self.vault.end_call,
            call.call_id,
            ended_at=utc_iso(self.clock()),
            outcome=call.outcome,
            end_reason=call.end_reason,
        )
        self.retry_kept_writes()
        session = call.session
        log.info(
            "call %s: ended (%s), outcome %s, recording %s, %d frames stored",
            call.call_id,
            call.end_reason,
            call.outcome,
            f"{row.id} {row.status.value}" if row else "none",
            session.stats.frames_stored if session else 0,
        )
        for observer in self.observers:
            observer.finished(call, row)
        return row

    async def close_orphans(self, platform: str, started_before: datetime) -> list[str]:
        """Close the catalog rows of ``platform`` calls that began before ``started_before``
        (this process's start) and never ended, and whose process died (others running on the
        same catalog keep theirs). Their platform call ids, for the platform to deal with what
        it still holds of them."""
        vault = self.vault

        def orphans() -> list[Any]:
            rows = vault.catalog.open_calls(platform, utc_iso(started_before))
            return [row for row in rows if not vault.writer_alive(row["owner"])]

        rows = await asyncio.to_thread(orphans)
        for row in rows:  # through the kept writes: a start on a full disk does not fail here
            await self.close_row(row["id"], ORPHAN_REASON, row["outcome"])
        return [row["platform_call_id"] for row in rows if row["platform_call_id"]]

    async def recover_dead_holders(self, platforms: tuple[str, ...]) -> tuple[int, int]:
        """What processes that died while sharing this catalog left open, finished now rather
        than at the next start: their recordings (every sealed chunk kept, status incomplete:
        ``Vault.recover``) and the rows of their calls on ``platforms`` (those that hold
        nothing of a call outside the catalog; Asterisk still holds the caller, whom the next
        process on that Stasis application hands back with the row). How many of each."""
        vault = self.vault

        def dead_calls() -> list[Any]:
            rows = vault.catalog.open_calls_held()
            return [
                row
                for row in rows
                if row["platform"] in platforms and not vault.writer_alive(row["owner"])
            ]

        recordings = len(await in_thread(vault.recover))
        rows = await asyncio.to_thread(dead_calls)
        for row in rows:
            await self.close_row(row["id"], DEAD_HOLDER_REASON, row["outcome"])
        if recordings or rows:
            log.warning(
                "finished what a stopped process left: %d recording(s) kept as they were, "
                "%d call record(s) closed",
                recordings,
                len(rows),
            )
        return recordings, len(rows)

    async def close_row(self, call_id: str, reason: str, outcome: str | None = None) -> None:
        """Close the row of a call no process holds any more (its process died): outcome
        ``interrupted`` unless it had one."""
        await asyncio.to_thread(
            self.vault.end_call,
            call_id,
            ended_at=utc_iso(self.clock()),
            outcome=outcome or "interrupted",
            end_reason=reason,
        )
        self.retry_kept_writes()

    async def expire(self) -> int:
        """Finish the calls nothing has fed for longer than their line could record (plus a
        margin): their platform never said goodbye. How many were finished."""
        now = self.monotonic()
        stale = [
            c
            for c in self._calls.values()
            if c.attached == 0
            and not c.finished
            and now - c.last_heard > c.line.max_recording_seconds + EXPIRY_MARGIN_SECONDS
        ]
        for call in stale:
            await self.finish(call, "no word from the platform; call forgotten")
        return len(stale)

    async def finish_all(self, reason: str) -> None:
        for call in list(self._calls.values()):
            await self.finish(call, reason)

    # -- catalog writes the disk refused ---------------------------------------------------
    def retry_kept_writes(self) -> None:
        """While the vault keeps writes the disk refused, retry them every few seconds (each
        new write retries them too); the task ends once none is left."""
        if self.vault.pending and (self._retry is None or self._retry.done()):
            self._retry = asyncio.create_task(self._retry_loop(), name="catalog-write-retry")

    async def _retry_loop(self) -> None:
        pending = self.vault.pending
        while True:
            await asyncio.sleep(self.retry_seconds)
            try:
                if await in_thread(pending.flush):
                    return
            except Exception:  # the retry must outlive any one failure; it logs, and goes on
                log.exception("retrying kept catalog writes failed")

    async def close(self) -> None:
        """Stop retrying (the vault makes one last attempt when it closes)."""
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
            self._retry = None
