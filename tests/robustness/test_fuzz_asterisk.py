"""Fuzzing the Asterisk side with fixed seeds: ARI events and RTP packets (issue 12.7).

The inputs are structured: mutations of the events Asterisk really sends (StasisStart,
ChannelDtmfReceived, ChannelHangupRequest, StasisEnd) and RTP headers field by field, not
random text into ``json.loads``. They go in as Asterisk would send them (the events socket, the
call's RTP port); afterwards nothing may have escaped (no traceback logged, no event we failed
to handle, the events loop never restarted) and a normal call must record complete.

Quick by default (``robustness_inputs``: 300 each); ``IVR_ROBUSTNESS_INPUTS=20000`` for the
long run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from ivr.harness.fake_asterisk import build_rtp
from ivr.service import ARI
from storage.catalog import RecordingStatus
from tests.test_asterisk_e2e import CONSENT_LINE, EMERGENCY_LINE, pbx, place, until

__all__ = ["pbx"]

log = logging.getLogger(__name__)

CHANNEL_IDS = ["fuzz-1", "fuzz-2", "1712345678.42", "", "ivr-00000000-0000000000000000-m"]
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["²", "١", "1", "#", "A", "+15550100004", "\x00", "\ud7ff"]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def channel(channel_id: str) -> dict[str, Any]:
    return {
        "id": channel_id,
        "name": f"PJSIP/caller-{channel_id}",
        "state": "Up",
        "protocol_id": "abc@127.0.0.1",
        "caller": {"name": "", "number": "+46701234567"},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {
            "context": "from-external",
            "exten": EMERGENCY_LINE,
            "priority": 2,
            "app_name": "Stasis",
            "app_data": f"ivr,{EMERGENCY_LINE}",
        },
        "creationtime": "2026-11-30T12:00:00.000+0000",
        "language": "en",
        "channelvars": {"IVR_LINE": ""},
    }


@st.composite
def real_event(draw: st.DrawFn, ids: list[str]) -> dict[str, Any]:
    channel_id = draw(st.sampled_from(ids))
    kind = draw(
        st.sampled_from(["StasisStart", "ChannelDtmfReceived", "ChannelHangupRequest", "StasisEnd"])
    )
    event: dict[str, Any] = {
        "type": kind,
        "timestamp": "2026-11-30T12:00:00.000+0000",
        "application": "ivr",
        "asterisk_id": "02:42:ac:11:00:02",
        "channel": channel(channel_id),
    }
    if kind == "StasisStart":
        event["args"] = draw(
            st.sampled_from([[], [EMERGENCY_LINE], ["+19999999999"], [CONSENT_LINE, "x"]])
        )
    elif kind == "ChannelDtmfReceived":
        event["digit"] = draw(st.sampled_from(list("0123456789*#")))
        event["duration_ms"] = draw(st.integers(0, 2000))
    elif kind == "ChannelHangupRequest":
        event["cause"] = draw(st.sampled_from([16, 17, 0, None]))
        event["soft"] = draw(st.booleans())
    return event


def at_path(event: dict[str, Any], path: list[str]) -> tuple[dict[str, Any], str]:
    node: Any = event
    for key in path[:-1]:
        node = node[key]
    return node, path[-1]


PATHS = [
    ["type"],
    ["channel"],
    ["channel", "id"],
    ["channel", "name"],
    ["channel", "caller"],
    ["channel", "caller", "number"],
    ["channel", "dialplan", "exten"],
    ["channel", "channelvars"],
    ["channel", "channelvars", "IVR_LINE"],
    ["args"],
    ["digit"],
    ["duration_ms"],
    ["cause"],
]


@st.composite
def ari_message(draw: st.DrawFn, ids: list[str]) -> str:
    """One events-socket message: a real event, mutated field by field, sometimes as text."""
    event = draw(real_event(ids))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(PATHS))
        try:
            node, key = at_path(event, path)
        except (KeyError, TypeError):
            continue
        if not isinstance(node, dict):
            continue
        action = draw(st.sampled_from(["drop", "replace", "nest"]))
        if action == "drop":
            node.pop(key, None)
        elif action == "replace":
            node[key] = draw(json_value)
        else:
            depth = draw(st.sampled_from([2, 31, 33, 200, 5000]))
            node[key] = json.loads("[" * min(depth, 30) + "]" * min(depth, 30))
            if depth > 30:  # deeper than json.dumps likes: spliced in as text
                text = json.dumps(event)
                return text.replace("[[", "[" * depth + "[[", 1).replace(
                    "]]", "]]" + "]" * depth, 1
                )
    text = json.dumps(event)
    form = draw(st.sampled_from(["json"] * 6 + ["truncated", "bytes", "wrapped", "huge"]))
    if form == "truncated":
        return text[: draw(st.integers(0, len(text)))]
    if form == "bytes":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.text(max_size=4)) + text[at:]
    if form == "wrapped":
        return "[" * draw(st.integers(1, 6000)) + text
    if form == "huge":
        return text[:-1] + ', "pad": "' + "x" * 300_000 + '"}'
    return text


def others_gone(app, live) -> bool:
    """Every call the fuzzed events started has ended (the live call may go on)."""
    return all(c is live.ari for c in app[ARI].calls.values())


def check_clean(app, caplog) -> None:
    ari_app = app[ARI]
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks[0].getMessage()
    assert ari_app.counters["events_failed"] == 0
    assert ari_app.events_loop.failures == 0 and ari_app.connected


async def normal_call_completes(fake, app) -> None:
    call = await place(fake, app, EMERGENCY_LINE)
    await call.talk(0.5)
    row = await call.hang_up()
    assert row.status is RecordingStatus.COMPLETE and call.session.stats.frames_stored == 25


async def test_fuzzed_ari_events(pbx, caplog, robustness_inputs):
    fake, app = pbx
    caplog.set_level(logging.INFO)
    live = await place(fake, app, EMERGENCY_LINE)  # fuzzed events also reach a real call
    ids = [*CHANNEL_IDS, live.fake.channel_id]
    messages: list[str] = []

    @seed(12)
    @settings(
        max_examples=robustness_inputs,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(ari_message(ids))
    def collect(text: str) -> None:
        messages.append(text)

    started = time.monotonic()
    collect()
    sent_before = fake.raw_sent
    for start in range(0, len(messages), 200):
        for text in messages[start : start + 200]:
            fake.send_raw(text)
        await fake.sync()
        await until(lambda: others_gone(app, live), "fuzzed calls to settle", 30)
    await fake.sync()
    assert fake.raw_sent - sent_before == len(messages)
    await until(lambda: others_gone(app, live), "fuzzed calls to settle", 30)
    if live.ari is not None and not live.fake.channel.destroyed:
        await live.hang_up()
    await until(lambda: live.ari is None, "the live call to end", 10)
    check_clean(app, caplog)
    await normal_call_completes(fake, app)
    counters = app[ARI].counters
    log.warning(
        "ARI fuzz: %d messages in %.1f s; events_bad %d, calls %d, log lines %d",
        len(messages),
        time.monotonic() - started,
        counters["events_bad"],
        counters["calls"],
        len(caplog.records),
    )


@st.composite
def rtp_datagram(draw: st.DrawFn) -> tuple[int, int, bytes]:
    """(sequence step, timestamp step, datagram): a header built field by field."""
    seq_step = draw(st.sampled_from([1, 1, 1, 1, 0, 2, -1, 5, 200, -200, 30_000, 99_999]))
    ts_step = draw(st.sampled_from([160, 160, 160, 0, -160, 8000 * 59, 2**31, 4 * 10**9]))
    pt = draw(st.sampled_from([0, 0, 0, 0, 101, 13, 8, 127]))
    payload = draw(st.sampled_from([bytes(160), b"", bytes(1), bytes(2000)]))
    form = draw(st.sampled_from(["plain"] * 6 + ["csrc", "ext", "pad", "version", "short"]))
    return seq_step, ts_step, (form + "|" + str(pt)).encode() + b"|" + payload


async def quiet(leg) -> None:
    """Wait until the service has taken in what was sent (its packet count stands still)."""
    before = -1
    while leg.packets != before:
        before = leg.packets
        await asyncio.sleep(0.01)


async def test_fuzzed_rtp(pbx, caplog, robustness_inputs):
    fake, app = pbx
    caplog.set_level(logging.INFO)
    call = await place(fake, app, EMERGENCY_LINE)
    await call.talk(0.2)
    peer = call.fake.media
    inputs: list[tuple[int, int, bytes]] = []

    @seed(34)
    @settings(
        max_examples=robustness_inputs,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(rtp_datagram())
    def collect(item: tuple[int, int, bytes]) -> None:
        inputs.append(item)

    started = time.monotonic()
    collect()
    leg = call.ari.rtp
    seq, ts = peer.sequence, peer.timestamp
    for i, (seq_step, ts_step, spec) in enumerate(inputs):
        form, pt_text, payload = spec.split(b"|", 2)
        seq, ts = seq + seq_step, ts + ts_step
        data = bytearray(build_rtp(int(pt_text), seq & 0xFFFF, ts & 0xFFFFFFFF, peer.ssrc, payload))
        if form == b"csrc":
            data[0] |= 0x0F
        elif form == b"ext":
            data[0] |= 0x10
        elif form == b"pad":
            data[0] |= 0x20
            if data:
                data[-1] = 0xFF
        elif form == b"version":
            data[0] = (data[0] & 0x3F) | 0x40
        elif form == b"short":
            data = data[: i % 12]
        await call.fake.inject_rtp(bytes(data))
        if i % 50 == 49:
            await quiet(leg)
    await quiet(leg)
    peer.sequence, peer.timestamp = (seq + 1) & 0xFFFF, (ts + 160) & 0xFFFFFFFF
    if not call.session.ended:
        await call.talk(0.2)
        await call.hang_up()
    row = call.session.row
    assert row is not None and row.status is RecordingStatus.COMPLETE
    line_max_ms = app[ARI].config.line_for(EMERGENCY_LINE).max_recording_seconds * 1000
    assert row.duration_ms <= line_max_ms
    check_clean(app, caplog)
    await normal_call_completes(fake, app)
    stats = leg.jitter.stats
    log.warning(
        "RTP fuzz: %d packets in %.1f s; recording %d ms; lost %d jumps %d late %d malformed %d",
        len(inputs),
        time.monotonic() - started,
        row.duration_ms,
        stats.lost,
        stats.jumps,
        stats.late,
        leg.malformed,
    )
