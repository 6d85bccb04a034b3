"""Asterisk on the service: the ARI (Stasis) application.

Events arrive on one websocket and go to the caller's ``AriCall`` (``call.py``), which runs the
call. The websocket reconnects with backoff when Asterisk restarts; calls still up are picked up
again, calls that ended meanwhile are finalised.

Every bridge and channel we create is named ``ivr-<instance>-<call key>-<kind>``
(``ari.own_id``): unique across processes, and marked as this instance's, so that after a crash
the next start finds its own leftovers (and only its own) and clears them: see
``AriApplication._clear_leftovers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiohttp

from ivr.calls import CallRegistry
from ivr.calls.rtp import BatchSweeper, PortRange
from ivr.config import Config
from ivr.log_limits import Warnings
from ivr.platforms.asterisk import ari
from ivr.platforms.asterisk.call import PLATFORM, AriCall
from ivr.platforms.asterisk.rest import AriHttpError, AriRest
from ivr.supervision import LoopHealth, describe, supervise

log = logging.getLogger(__name__)

BACKOFF_START, BACKOFF_MAX = 0.5, 10.0
# An event that could not be handled (not a malformed one: a failure of ours) keeps the
# application degraded on /healthz for this long after the last one.
EVENT_FAILURE_DEGRADES_SECONDS = 60.0
MAX_MESSAGE_BYTES = 4 * ari.MAX_EVENT_BYTES


class AriApplication:
    """The Stasis application: events in, one ``AriCall`` per caller."""

    def __init__(
        self,
        config: Config,
        registry: CallRegistry,
        *,
        clock: Callable[[], datetime],
        wall: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        assert config.asterisk is not None
        self.config = config
        self.settings = config.asterisk
        self.registry = registry
        self.wall = wall
        self.sleep = sleep
        self.calls: dict[str, AriCall] = {}  # the channels we serve, by caller channel id
        self.own_channels: dict[str, AriCall] = {}
        self.counters: Counter[str] = Counter()  # served at /healthz
        self.connected = False
        self.connections = 0
        self.replaced = False  # another websocket took our application name
        self.instance = ari.instance_tag(self.settings.app)
        self.started_at = clock()
        self.rtp_ports = PortRange(
            self.settings.rtp_bind, self.settings.rtp_port_min, self.settings.rtp_port_max
        )
        self.rtp_batches = BatchSweeper()  # one timer for every call's RTP batches
        # Made here, so every field is valid from construction (which therefore happens inside
        # the running loop, in the service's asterisk step); start() only begins listening.
        self._session = aiohttp.ClientSession()
        self.rest = AriRest(self._session, self.settings)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.events_loop = LoopHealth("ARI events loop", wall=wall)
        self.last_event_failure: tuple[float, str] | None = None  # when, and what
        self.warnings = Warnings(log, clock=wall)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(
            supervise(self.events_loop, self._events_loop, sleep=self.sleep), name="ari-events"
        )

    @property
    def problem(self) -> str | None:
        """Why the application is not taking Asterisk's calls as it should, in words; None
        when it is. Shown on /healthz, which then says ``degraded``."""
        if self.replaced:
            return "another connection registered the Stasis application"
        loop = self.events_loop.problem
        if loop is not None:
            return loop
        if not self.connected:
            return "ARI events socket not connected"
        failure = self.last_event_failure
        if failure is not None and self.wall() - failure[0] < EVENT_FAILURE_DEGRADES_SECONDS:
            return f"an ARI event could not be handled ({failure[1]})"
        return None

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
        await self._session.close()

    async def rest_quiet(self, request: ari.Request) -> bool:
        """Best-effort clean-up calls: a 404 just means it is gone already."""
        try:
            await self.rest(request)
        except AriHttpError as exc:
            if exc.status not in (404, 409):
                log.debug("%s", exc)
            return False
        return True

    async def hand_back(self, channel_id: str, error: str) -> bool:
        """Return a caller to the dialplan after ``Stasis()`` with ``IVR_ERROR`` set, so the
        PBX decides what they get (an apology, a queue); hang up should that fail. True when
        the channel was handed back (it is the dialplan's now)."""
        await self.rest_quiet(ari.set_variable(channel_id, "IVR_ERROR", error))
        if await self.rest_quiet(ari.continue_in_dialplan(channel_id)):
            return True
        await self.rest_quiet(ari.hang_up(channel_id, "congestion"))
        return False

    # -- events --------------------------------------------------------------------------------
    async def _events_loop(self) -> None:
        """Connect, listen, reconnect with backoff when the connection fails or ends. Any
        other error ends this loop and is the supervisor's (``start``): counted, logged once,
        restarted with backoff."""
        url = self.settings.url.replace("http", "ws", 1) + "/events"
        backoff = BACKOFF_START
        while not self._stopping:
            try:
                await self._listen(url)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if self.connected:
                    backoff = BACKOFF_START
                log.warning("ARI events: %s; retrying in %.1f s", exc, backoff)
            else:
                backoff = BACKOFF_START
                if not self._stopping:
                    log.warning("ARI events connection lost; retrying in %.1f s", backoff)
            finally:
                self.connected = False  # whatever ended the connection, even a bug
            if self._stopping:
                return
            await self.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _listen(self, url: str) -> None:
        """One events connection, until it closes."""
        settings = self.settings
        async with self._session.ws_connect(
            url,
            params={"app": settings.app, "subscribeAll": "false"},
            headers=self.rest.headers,
            heartbeat=30,
            # Larger than any event we take: a too-large event is read, refused and counted
            # like any bad one, rather than closing the socket (and losing the events behind
            # it); beyond this aiohttp closes it (1009) and we reconnect.
            max_msg_size=MAX_MESSAGE_BYTES,
        ) as ws:
            self.connected = True
            self.connections += 1
            self.replaced = False
            log.info("ARI events connected (%s, app %s)", settings.url, settings.app)
            await self._resync(first=self.connections == 1)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_event_text(msg.data)
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    self.counters["events_socket_errors"] += 1
                    log.warning("ARI events socket error: %s", msg.data)
                    break
                elif msg.type == aiohttp.WSMsgType.CLOSE:
                    break

    async def _resync(self, *, first: bool) -> None:
        """After a (re)connect: calls whose caller vanished meanwhile are finalised, and what
        an earlier process of ours left in Asterisk is cleared."""
        for call in list(self.calls.values()):
            try:
                await self.rest(ari.get_channel(call.caller.id))
            except AriHttpError as exc:
                if exc.status == 404:
                    call.caller_left("caller gone while ARI was disconnected")
        try:
            await self._clear_leftovers(first=first)
        except Exception:  # clean-up must never stop the events loop
            log.exception("ARI: clearing leftovers of an earlier run failed")

    async def _clear_leftovers(self, *, first: bool) -> None:
        """Bridges and channels with this instance's ids that no live call owns were left by a
        process that died (SIGKILL, power cut): hang up our media and agent channels, destroy
        our bridges, and hand the callers found in them back to the dialplan
        (``IVR_ERROR=service_restarted``). On the first connection, calls the catalog still
        has open from before this process started are closed too, and their callers (if
        Asterisk still holds them) handed back. Nobody else's bridges or channels are touched
        (``ari.find_leftovers``)."""
        channels = ari.channel_ids_from_json(await self.rest(ari.list_channels()))
        found = ari.find_leftovers(
            self.instance,
            {call.key for call in self.calls.values()},
            ari.bridges_from_json(await self.rest(ari.list_bridges())),
            channels,
        )
        for bridge_id in found.bridges:
            await self.rest_quiet(ari.destroy_bridge(bridge_id))
        for channel_id in found.channels:
            await self.rest_quiet(ari.hang_up(channel_id))
        callers = set(found.callers)
        closed: list[str] = []
        if first:
            closed = await self.registry.close_orphans(PLATFORM, self.started_at)
            callers.update(c for c in closed if c in channels)
        for channel_id in sorted(callers - set(self.calls)):
            await self.hand_back(channel_id, "service_restarted")
        cleared = len(found.bridges) + len(found.channels)
        if cleared or closed or callers:
            self.counters["leftovers_cleared"] += cleared
            log.warning(
                "ARI: cleared %d bridge(s)/channel(s) left by an earlier run, closed %d call "
                "record(s), handed %d caller(s) back to the dialplan",
                cleared,
                len(closed),
                len(callers),
            )

    def _on_event_text(self, text: str) -> None:
        """One message from the events socket. Never raises: a malformed event is counted and
        dropped (``_bad_event``); one we fail to handle is counted, logged with its traceback
        the first time, and keeps /healthz degraded for a while, but the next event is read."""
        try:
            event = ari.parse_event(text)
        except ari.AriEventError as exc:
            self._bad_event(exc)
            return
        try:
            self._on_event(event)
        except Exception as exc:
            self.counters["events_failed"] += 1
            self.last_event_failure = (self.wall(), describe(exc))
            first = self.counters["events_failed"] == 1
            log.error(
                "ARI %s event could not be handled: %s",
                type(event).__name__,
                describe(exc),
                exc_info=exc if first else None,
            )

    def _bad_event(self, exc: ari.AriEventError) -> None:
        """Counted (``events_bad``) and logged at debug level; a warning for the first one and
        then at most once a minute with how many came since (ivr/log_limits.py): a flood of
        bad events from the PBX costs a few lines, not one each."""
        self.counters["events_bad"] += 1
        log.debug("ARI event dropped: %s", exc)
        self.warnings.warn(
            "bad-event",
            "ARI event dropped: %s (counted in events_bad, %d so far; further ones are logged "
            "at debug level, summed up at most once a minute)",
            exc,
            self.counters["events_bad"],
        )

    def _on_event(self, event: ari.AriEvent) -> None:
        if isinstance(event, ari.ApplicationReplaced):
            self.replaced = True
            self.counters["application_replaced"] += 1
            log.error(
                "ARI: another connection registered the Stasis application %r: new calls go "
                "there, not here. Give each service instance its own [asterisk] app name.",
                self.settings.app,
            )
            return
        if isinstance(event, ari.UnknownEvent):
            self.counters["events_other"] += 1
            return
        channel = event.channel
        if isinstance(event, ari.StasisStart):
            if channel.ours:
                self._own_channel_entered(channel.id)
                return
            if channel.id in self.calls:
                return  # a repeated StasisStart for a call we already have
            new = AriCall(self, channel, ari.new_call_key(), event.args)
            self.calls[channel.id] = new
            new.task = asyncio.create_task(new.run(), name=f"ari-call-{channel.id}")
            return
        call = self.calls.get(channel.id)
        own = self.own_channels.get(channel.id)
        if call is not None:
            if isinstance(event, ari.DtmfReceived):
                call.post("digit", event.digit)
            else:
                call.caller_left(ari.caller_end(event))
        elif own is None:
            self.counters["events_unknown_channel"] += 1
            log.debug("ARI %s for unknown channel %s ignored", type(event).__name__, channel.id)
        elif not isinstance(event, ari.DtmfReceived) and not own.finished:
            agent = channel.id == own.agent_id
            reason = ari.own_channel_end(event, agent=agent, answered=own.agent_answered)
            own.ended_by(reason)
            own.post("end", reason)

    def _own_channel_entered(self, channel_id: str) -> None:
        call = self.own_channels.get(channel_id)
        if call is None:
            return
        if channel_id == call.media_id:
            if call.media_entered is not None and not call.media_entered.done():
                call.media_entered.set_result(None)
        elif channel_id == call.agent_id:
            call.agent_answered = True
            call.post("agent", channel_id)

    # -- per-call helpers ----------------------------------------------------------------------
    def forget(self, call: AriCall) -> None:
        self.calls.pop(call.caller.id, None)
        for channel_id in (call.media_id, call.agent_id):
            if channel_id:
                self.own_channels.pop(channel_id, None)
