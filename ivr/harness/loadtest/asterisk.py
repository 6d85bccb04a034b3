"""``ivr loadtest --platform asterisk``: many PBX calls at once, and what they cost the service.

The service must run with its ``[asterisk] url`` pointing at ``--ari-listen`` (default
127.0.0.1:8088), where a fake Asterisk (``ivr.harness.fake_asterisk``, unpaced: it sends no RTP
of its own) places N calls, ramped, to ``--to``. The service answers and bridges each with an
external-media channel. The fake's own state (the caller's channel, its variables, its bridge),
looked at whenever a request of the service about the call has been answered
(``FakeAsterisk.observers``), gives the set-up time (StasisStart to bridged), the recording id
and the moment the service has finalised a call (it destroys the bridge last). On
an opt-in line the caller presses the accept key ``--press-after`` seconds after the bridge is
up and streams once the service reports the recording; elsewhere (the default line records at
once) it streams as soon as it is bridged.

Media: the shared ticker (``core.StreamRun``) sends every 20 ms the next packet of each call's
external-media RTP stream (``RtpPeer.next_audio_packet``: PCMU, a one-second tone), with
``sendto`` on a duplicate of that channel's socket, the only source the service accepts. The
service's own RTP (prompts) arriving at the fake gives the time from bridged to first prompt.

After ``--duration`` seconds of RTP the caller hangs up and the service's finalisation is
awaited; then ``/healthz`` is polled until ``calls_completed`` has grown by every call, and its
counter deltas give frames stored and lost (``frames_lost`` = sent - stored: 0 on loopback; the
service fills RTP gaps with silence and counts them in ``rtp_lost``). Frames lost with no
``rtp_lost`` are calls' last packets: the hang-up follows them at once, as on Asterisk, and a
lagging service reads its events websocket before the datagrams still in the call's socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from ivr.harness.audio import tone
from ivr.harness.fake_asterisk import FakeAsterisk, FakeCall, RecordedRequest, RtpPeer, parse_addr
from ivr.harness.fake_asterisk.model import BridgeState
from ivr.harness.loadtest.core import (
    PRESS_AFTER_S,
    CallFailed,
    CallResult,
    Driver,
    Options,
    SetupError,
    TickedStream,
    fmt,
    p50_p99,
)

DEFAULT_ASTERISK_TO = "+15550100004"  # the demo's vital_interests/none line: records at once
DEFAULT_ARI_LISTEN = "127.0.0.1:8088"
ARI_PASSWORD_ENV = "ARI_PASSWORD"
DEMO_ARI_PASSWORD = "demo"
CONNECT_TIMEOUT_S = 30.0  # the service's ARI client backs off up to 10 s between attempts
SETUP_TIMEOUT_S = 30.0  # StasisStart -> bridged
DECISION_TIMEOUT_S = 30.0  # accept key -> IVR_RECORDING_ID
FINALISE_TIMEOUT_S = 60.0  # caller hang-up -> bridge destroyed
SETTLE_POLL_S = 0.2
_TONE = tone(440.0, -12.0)
POOL: tuple[bytes, ...] = tuple(_TONE.frame(i) for i in range(len(_TONE)))  # one second
_T = TypeVar("_T")


@dataclass(frozen=True)
class AsteriskLoadtestOptions(Options):
    to: str = DEFAULT_ASTERISK_TO
    press_after: float = PRESS_AFTER_S  # seconds after the bridge is up
    ari_listen: str = DEFAULT_ARI_LISTEN
    ari_app: str = "ivr"
    ari_user: str = "ivr"
    ari_password: str | None = None  # None: $ARI_PASSWORD, else "demo"
    connect_timeout: float = CONNECT_TIMEOUT_S

    def resolved_password(self) -> str:
        if self.ari_password is not None:
            return self.ari_password
        return os.environ.get(ARI_PASSWORD_ENV) or DEMO_ARI_PASSWORD

    def listen(self) -> tuple[str, int]:
        if (addr := parse_addr(self.ari_listen)) is None:
            raise ValueError(f"--ari-listen {self.ari_listen!r} is not HOST:PORT")
        return addr

    def deadline(self) -> float:
        margin = self.margin if self.margin is not None else 60.0 + 0.1 * self.calls
        press = self.press_after if self.resolved_press() else 0.0
        return self.resolved_ramp() + press + self.duration + margin

    def check(self) -> None:
        super().check()
        if not self.press_after >= 0:
            raise ValueError("--press-after must not be negative")
        self.listen()


# -- the RTP stream -----------------------------------------------------------------------------
class _RtpStreamer(TickedStream):
    """One call's real-time RTP stream, fed by the ticker: the next packets of ``peer``'s stream,
    sent with ``sendto`` on ``sock`` (a datagram the socket refuses is dropped, not queued)."""

    send_failure = "RTP send failed"
    over_tcp = False

    def __init__(self, sock: socket.socket, peer: RtpPeer, total: int) -> None:
        super().__init__(total)  # packets; ``sent`` counts those due, sent or dropped
        self.send = sock.sendto
        self.peer = peer
        self.dropped = 0  # packets the socket refused (EAGAIN)

    @property
    def frames_sent(self) -> int:
        return self.sent - self.dropped

    @classmethod
    def stats(cls, streams: list[_RtpStreamer]) -> dict[str, Any]:
        return {"send_errors": sum(s.dropped for s in streams)}

    def pump(self, due: int) -> int:
        """Send every packet owed by tick ``due``; returns the packets sent."""
        start, target = self.sent, min(due - self.join_tick, self.total)
        next_packet, dest, dropped = self.peer.next_audio_packet, self.peer.remote, self.dropped
        for n in range(start, target):
            try:
                self.send(next_packet(POOL[n % len(POOL)]), dest)
            except BlockingIOError:
                self.dropped += 1
        self.sent = max(start, target)
        return self.sent - start - (self.dropped - dropped)


# -- the driver ------------------------------------------------------------------------------
class AsteriskDriver(Driver[AsteriskLoadtestOptions]):
    platform = "asterisk"
    options_type = AsteriskLoadtestOptions
    stream = _RtpStreamer
    media = "of RTP"
    timings = (
        "ari_setup_ms",
        "ari_answer_ms",
        "decision_ms",
        "first_prompt_ms",
        "hangup_to_final_ms",
    )
    headline = "ari_setup_ms"
    top = ("rtp_lost",)
    lag = ("hangup_to_final_ms", "hangup->final")
    saturation = "saturated CPU, queue overflow"
    note = "; fake ARI at {ari_listen}"
    shown = ("ari_listen",)
    ok_if = ("finalised", "frames_sent")
    ok_if_zero = ("server_frames_lost", "rtp_lost")
    # Per-call queues overflow: the hang-up then waits behind queued RTP before finalisation.
    overload = "call_queue_overflow"

    def __init__(self, options: AsteriskLoadtestOptions, session: aiohttp.ClientSession) -> None:
        super().__init__(options, session)
        host, port = options.listen()
        self.fake = FakeAsterisk(
            app=options.ari_app,
            username=options.ari_user,
            password=options.resolved_password(),
            host=host,
            port=port,
            seed=random.getrandbits(32),
        )
        self.woken: dict[str, asyncio.Event] = {}  # by caller channel id and by bridge id
        self.fake.observers.append(self._answered)
        self.id_prefix = str(int(time.time() * 1000))
        self.placed = self.bridged = 0
        self.before: dict[str, int] = {}  # the service's counters before the first call
        self.delta: dict[str, int] = {}  # and how they grew
        self.settled = False

    async def __aenter__(self) -> AsteriskDriver:
        try:
            await self.fake.start()
        except OSError as exc:
            await self.fake.stop()
            raise SetupError(
                f"the fake Asterisk cannot listen on {self.options.ari_listen}: {exc}"
            ) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.fake.stop()

    async def send_rtp(self, result: CallResult, sock: socket.socket, peer: RtpPeer) -> None:
        """``peer``'s stream, sent on ``sock`` through the ticker; CallFailed if it fails."""
        streamer = await result.stream(_RtpStreamer(sock, peer, self.options.frames()))
        result.counts["send_errors"] = streamer.dropped
        if streamer.error is not None:
            raise CallFailed(streamer.error)

    async def _health(self) -> tuple[dict[str, int], bool]:
        """The service's Asterisk counters from /healthz, and whether it has no call in
        progress; CallFailed if /healthz cannot tell."""
        section = (await self.healthz()).get("asterisk")
        if not isinstance(section, dict):
            url = f"{self.options.url.rstrip('/')}/healthz"
            raise CallFailed(f"{url} has no 'asterisk' section: is [asterisk] configured?")
        counters = section.get("counters") or {}
        idle = not section.get("calls_in_progress")
        return {k: int(v) for k, v in counters.items() if isinstance(v, int)}, idle

    async def prepare(self) -> None:
        o = self.options
        self.before, _ = await self._health()
        try:
            await self.fake.wait_connected(o.ari_app, timeout=o.connect_timeout)
        except TimeoutError as exc:
            raise CallFailed(f"{exc} (--ari-listen)") from None

    def _answered(self, record: RecordedRequest) -> None:
        """Wake the call that a request of the service concerns, once answered: the request names
        its caller (``/ari/channels/ID/...``, or among the channels added to a bridge) or its
        bridge (``/ari/bridges/ID``). One look-up a request, however many calls are waiting."""
        for id_ in (*record.path.split("/")[3:4], *record.query.get("channel", "").split(",")):
            woken = self.woken.get(id_)
            if woken is not None:
                woken.set()

    async def call(self, result: CallResult) -> None:
        """One call: placed, bridged by the service, on an opt-in line the key and the recording,
        the RTP stream, the caller's hang-up and the service's finalisation. Each step is read
        from the fake's own state (the caller's channel, its variables, its bridge) whenever a
        request of the service about this call has been answered."""
        o, press = self.options, self.options.resolved_press()
        channel_id = f"{self.id_prefix}.{result.index + 1}"
        woken = self.woken[channel_id] = asyncio.Event()
        call: FakeCall | None = None
        bridge: BridgeState | None = None
        placed_at, bridged_at = time.monotonic(), 0.0

        def since(t: float) -> float:
            return (time.monotonic() - t) * 1000

        async def until(check: Callable[[], _T | None], timeout: float, what: str) -> _T:
            """The first answer of ``check()`` that is not None."""
            try:
                async with asyncio.timeout(timeout):
                    while (value := check()) is None:
                        woken.clear()
                        await woken.wait()
                    return value
            except TimeoutError:
                raise CallFailed(f"{what} within {timeout:.0f} s") from None

        try:
            call = await self.fake.place_call(o.to, o.from_, channel_id=channel_id)
            ch = call.channel
            self.placed += 1

            def bridged() -> RtpPeer | bool | None:
                if ch.answered and "ari_answer_ms" not in result.ms:
                    result.ms["ari_answer_ms"] = since(placed_at)
                return False if ch.destroyed else self.fake.pbx.bridge_peer(ch)

            peer = await until(bridged, SETUP_TIMEOUT_S, "the call was not bridged")
            if not isinstance(peer, RtpPeer):
                raise CallFailed(f"the service hung up during set-up (cause {ch.cause})")
            self.bridged += 1
            bridged_at = time.monotonic()
            result.ms["ari_setup_ms"] = since(placed_at)
            assert ch.bridge_id is not None  # bridged
            bridge = self.fake.bridges[ch.bridge_id]
            self.woken[bridge.id] = woken
            if press:
                await asyncio.sleep(max(0.0, bridged_at + o.press_after - time.monotonic()))
                pressed_at = time.monotonic()
                await call.press(press)

                def recording() -> str | None:
                    decision = ch.vars.get("IVR_CONSENT_DECISION", "accepted")
                    failed = ch.destroyed or decision != "accepted"
                    return ch.vars.get("IVR_RECORDING_ID") or ("" if failed else None)

                if not await until(
                    recording, DECISION_TIMEOUT_S, f"no recording after key {press}"
                ):
                    decision = ch.vars.get("IVR_CONSENT_DECISION") or "-"
                    raise CallFailed(f"no recording after key {press} (decision {decision})")
                result.ms["decision_ms"] = since(pressed_at)
            with peer.dup_socket() as sock:
                await self.send_rtp(result, sock, peer)
            if ch.destroyed:
                raise CallFailed(f"the service hung up during the call (cause {ch.cause})")
        except CallFailed as exc:
            result.error = str(exc)
        except (OSError, RuntimeError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            result.give_up()  # if it never streamed
        if call is not None:  # the caller hangs up whatever happened; the bridge goes last
            try:
                if not call.channel.destroyed:
                    hung_up_at = time.monotonic()
                    await call.hangup()
                    if bridge is not None:
                        final = bridge
                        what = "the service did not finalise the call"
                        await until(lambda: final.destroyed or None, FINALISE_TIMEOUT_S, what)
                        result.ms["hangup_to_final_ms"] = since(hung_up_at)
            except CallFailed as exc:
                result.error = result.error or str(exc)
            except (OSError, RuntimeError) as exc:
                result.error = result.error or f"hang-up: {type(exc).__name__}: {exc}"
            prompt = call.received_rtp()
            result.counts["prompt_packets"] = len(prompt)
            if prompt and bridged_at:
                result.ms["first_prompt_ms"] = (prompt[0].arrival - bridged_at) * 1000
        del self.woken[channel_id]
        if bridge is not None:
            del self.woken[bridge.id]
        if result.error is None and (bridge is None or not bridge.destroyed):
            result.error = "the call was never finalised"

    def progress_head(self) -> str:
        return f"placed {self.placed}/{self.options.calls}, bridged {self.bridged}"

    async def settle(self, results: list[CallResult]) -> list[str]:
        """Poll /healthz until calls_completed has grown by every call placed (or, if some never
        reached the service, until it has finished every call it took); its counters' growth
        is the service's side of the report."""
        loop, before = asyncio.get_running_loop(), self.before
        deadline = loop.time() + 30.0 + 0.05 * self.options.calls
        while True:
            with contextlib.suppress(CallFailed):
                after, idle = await self._health()
                delta = {k: after.get(k, 0) - before.get(k, 0) for k in sorted({*after, *before})}
                self.delta, done = delta, delta.get("calls_completed", 0)
                if done >= self.placed or (idle and done >= delta.get("calls", 0)):
                    self.settled = True
                    return []
            if loop.time() >= deadline:
                bridged = sum(1 for r in results if "ari_setup_ms" in r.ms)
                grew = self.delta.get("calls_completed", 0)
                return [f"/healthz: calls_completed grew by {grew} of {bridged} calls in time"]
            await asyncio.sleep(SETTLE_POLL_S)

    def service_fields(self, results: list[CallResult]) -> dict[str, Any]:
        sent, delta = sum(r.frames_sent for r in results), self.delta
        return {
            "frames_stored": delta.get("frames_stored", 0),
            "frames_lost": sent - delta.get("frames_stored", 0),
            "send_errors": sum(r.counts["send_errors"] for r in results),
            "server_frames_lost": delta.get("frames_lost", 0),
            "rtp_lost": delta.get("rtp_lost", 0),
            "counters": delta,
            "finalised": self.settled,
            "ari_requests": len(self.fake.requests),
            "ari_rejected": self.fake.rejected,
            "prompt_packets": sum(r.counts["prompt_packets"] for r in results),
        }

    @classmethod
    def rows(cls, s: dict[str, Any]) -> list[tuple[str, str]]:
        setup, answer, prompt = s["ari_setup_ms"], s["ari_answer_ms"], s["first_prompt_ms"]
        rows = [
            (
                "frames",
                f"sent {fmt(s['frames_sent'])}, stored {fmt(s['frames_stored'])}, lost "
                f"{fmt(s['frames_lost'])}; service: frames lost {fmt(s['server_frames_lost'])}, "
                f"rtp lost {fmt(s['rtp_lost'])}"
                + (f"; send errors {fmt(s['send_errors'])}" if s["send_errors"] else ""),
            ),
            (
                "ari set-up ms",
                f"{p50_p99(setup)}  max {fmt(setup['max'])}  (StasisStart -> bridged; answer "
                f"p50 {fmt(answer['p50'])} p99 {fmt(answer['p99'])}); "
                f"{fmt(s['ari_requests'])} requests, {fmt(s['ari_rejected'])} rejected",
            ),
        ]
        if s["decision_ms"]["count"]:
            rows.append(("key->recording ms", p50_p99(s["decision_ms"])))
        rows.append(
            (
                "first prompt ms",
                f"{p50_p99(prompt)}  (bridged -> first RTP packet, n={prompt['count']})"
                if prompt["count"]
                else "- (no prompt played on this line)",
            )
        )
        return rows
