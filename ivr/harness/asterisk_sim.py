"""One simulated PBX call: the fake Asterisk hands a caller to the service's ARI application.

The service must be configured to reach this fake (``[asterisk] url`` at the address the fake
listens on; see docs/asterisk.md). The fake waits for the service's events websocket, places
the call, streams caller audio as RTP, presses keys and hangs up at the given call times, and
reads the outcome from the channel variables the service sets (IVR_CONSENT_DECISION,
IVR_LAWFUL_BASIS, IVR_RECORDING_ID).

The call clock moves by one 20 ms RTP packet at a time: every 20 ms of wall time (after a stall
it resynchronises rather than bursts), or in fast mode on virtual time, where after each packet
and each key the fake syncs with the service (``FakeAsterisk.sync``: a ping on
the events websocket, answered once the service has read everything before it). The packet was
in the service's socket before the ping was sent, and the service's event loop takes a ready
datagram before it gets to the events reader woken by the ping, so the pong also means the
packet was taken: keys land at their call time and the service is never behind the call clock,
however slow the machine. What the service then does on its own time (opening a recording, a
REST round trip such as originating the agent) is not waited for: the call goes on meanwhile,
as on a real PBX, so when the agent is connected can vary by a few frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from ivr.harness.fake_asterisk import FakeAsterisk, FakeCall
from ivr.harness.twilio_sim import DEFAULT_FROM, DEFAULT_TO, CallResult, TranscriptEntry

FRAME_S = 0.02
REPORT_FRAMES = 10  # how often (in frames) the transcript looks at the prompt audio heard


@dataclass(frozen=True)
class AsteriskCallOptions:
    host: str = "127.0.0.1"
    port: int = 8088
    app: str = "ivr"
    username: str = "ivr"
    password: str = "demo"
    to: str = DEFAULT_TO
    from_: str = DEFAULT_FROM
    presses: list[tuple[float, str]] = field(default_factory=list)
    hangup_at: float | None = None
    duration: float = 5.0  # talking with the agent once connected
    fast: bool = False
    max_call_seconds: float = 600.0
    connect_timeout: float = 30.0  # the service retries with backoff; give it time to find us


async def simulate_asterisk_call(
    options: AsteriskCallOptions,
    *,
    on_transcript: Callable[[TranscriptEntry], None] | None = None,
) -> CallResult:
    fake = FakeAsterisk(
        app=options.app,
        username=options.username,
        password=options.password,
        host=options.host,
        port=options.port,
    )
    result = CallResult(call_sid="")  # its duration is the call time so far

    def note(text: str) -> None:
        result.transcript.append(TranscriptEntry(round(result.duration, 2), text))
        if on_transcript:
            on_transcript(result.transcript[-1])

    try:
        await fake.start()
        note(
            f"fake Asterisk listening at {fake.url}; waiting for the service's app {options.app!r}"
        )
        await fake.wait_connected(options.app, timeout=options.connect_timeout)
        call = await fake.place_call(options.to, options.from_)
        result.call_sid = call.channel_id
        note(f"→ StasisStart for channel {call.channel_id} (exten {options.to})")
        await call.wait_until_bridged(timeout=10)
        note("← answered; bridge with external media up")
        await _drive(fake, call, options, note, result)
    except Exception as exc:  # a harness never hangs or dies on a misbehaving service
        result.error = f"{type(exc).__name__}: {exc}"
        note(f"error: {result.error}")
    finally:
        if result.call_sid:  # placed: the fake keeps its channel, and what its caller heard
            placed = fake.calls[result.call_sid]
            variables = placed.channel.vars
            result.status_response = {
                "decision": variables.get("IVR_CONSENT_DECISION") or None,
                "lawful_basis": variables.get("IVR_LAWFUL_BASIS") or None,
                "recording_id": variables.get("IVR_RECORDING_ID") or None,
            }
            heard = placed.prompt_audio()
            result.prompt_ms_received = len(heard) / 8
            result.audio_heard = bytearray(heard)
        await fake.stop()
    return result


async def _drive(
    fake: FakeAsterisk,
    call: FakeCall,
    options: AsteriskCallOptions,
    note: Callable[[str], None],
    result: CallResult,
) -> None:
    """Play the caller's part until someone hangs up; ``result.duration`` follows the call time."""
    presses = sorted(options.presses)
    now = 0.0
    frames = 0  # packets sent: the call clock
    heard = 0.0  # seconds of prompt audio received, as last reported
    playing = False
    end_at = options.hangup_at
    agent_seen = False
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        result.duration = now
        if now >= options.max_call_seconds:
            note("caller gives up (max call seconds)")
            await call.hangup()
            return
        if call.channel.destroyed:
            note("← the service hung up")
            return
        while presses and presses[0][0] <= now:
            _, digit = presses.pop(0)
            await call.press(digit)
            note(f"→ pressed {digit}")
            if options.fast:
                await fake.sync(options.app)
        if not agent_seen and call.agent is not None and call.agent.bridge_id:
            agent_seen = True
            note("← agent connected into the bridge")
            if end_at is None:
                end_at = now + options.duration
        if end_at is not None and now >= end_at:
            await call.hangup()
            note("→ caller hangs up")
            return
        if frames % REPORT_FRAMES == 0:
            received = len(call.prompt_audio()) / 8000
            if received > heard and not playing:
                playing = True
                note("← prompt audio starts")
            elif received == heard and playing:
                playing = False
                note(f"← prompt audio paused; {received:.2f} s heard so far")
            heard = received
        if fake.pbx.bridge_peer(call.channel) is not None:  # else nobody hears the caller
            await call.send_audio(1)
        frames += 1
        now = frames * FRAME_S
        if options.fast:
            await fake.sync(options.app)
        else:  # real time: the next packet when its 20 ms are due
            late = loop.time() - (start + now)
            await asyncio.sleep(max(0.0, -late))
            if late > 5 * FRAME_S:  # stalled: resynchronise, do not burst
                start += late
