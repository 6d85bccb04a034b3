"""Twenty SIP calls arriving at once, ten times over, on one Asterisk and one service.

This is where real Asterisk lost up to 8 of 20 calls at set-up (the external-media channel
bridged before it had entered the Stasis application). Every round must give 20 recordings,
each holding its own caller's audio and nothing else. The set-up time the caller experiences
(INVITE sent → first prompt packet received) is printed as p50/p99 over all calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.asterisk.checks import find_in_recording, found_in_stream, heard
from tests.asterisk.conftest import Phones
from tests.asterisk.driver import Driver
from tests.asterisk.pbx import Asterisk, build
from tests.asterisk.service import CONSENT_LINE, Service

CALLS = 20
ROUNDS = 10
# Of a caller's audio sent on time while the agent's leg is in the bridge (Asterisk mixing,
# bridge_softmix), this much at least must be in the recording, in order. Not all of it: on a
# busy machine a few frames of the mixed part go missing now and then (seen: 96.4% and 96.9% kept,
# in two of some thirty rounds); where Asterisk drops them is not pinned down yet, the bridge's
# switch from relaying to mixing when the agent joins being the likely moment. The two-party part
# before it is checked frame for frame.
MIXED_SHARE = 0.95


@dataclass
class Bench:
    pbx: Asterisk
    service: Service
    root: Path
    setup_ms: list[float] = field(default_factory=list)
    answer_ms: list[float] = field(default_factory=list)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    root = tmp_path_factory.mktemp("concurrency")
    pbx = Asterisk(build())
    pbx.start()
    service = Service(pbx, root)
    try:
        service.start()
        yield Bench(pbx, service, root)
    finally:
        service.close()
        pbx.close()


def caller(round_no: int, i: int) -> str:
    return f"+4670555{round_no:02d}{i:02d}"


async def _round(bench: Bench, round_no: int) -> list[Driver]:
    root = bench.root / f"round{round_no}"
    root.mkdir()
    phones = Phones(bench.pbx, root)
    try:
        await phones.agents(calls=None)

        async def one(i: int) -> Driver:
            call = await phones.dial(CONSENT_LINE, caller(round_no, i), name=f"c{i:02d}")
            await call.wait_answered()
            d = Driver(call, CONSENT_LINE)
            await d.accept("info" if i % 2 else "rfc4733")
            await d.talk(1.0)
            d.hang_up()
            assert await call.wait_ended() == "local"
            return d

        # All twenty INVITEs leave together.
        return list(await asyncio.gather(*(one(i) for i in range(CALLS))))
    finally:
        await phones.close()


@pytest.mark.parametrize("round_no", range(ROUNDS))
def test_twenty_calls_at_once(bench: Bench, round_no: int) -> None:
    service = bench.service
    drivers = asyncio.run(_round(bench, round_no))
    service.until(lambda: service.calls_in_progress() == 0, "every call to end")
    calls = service.call_rows()
    recordings = service.recording_rows()
    with contextlib.closing(service.vault()) as vault:
        hashes = {vault.caller_hash("demo", caller(round_no, i)): i for i in range(CALLS)}
    mine = {hashes[r["caller_hash"]]: r for r in calls.values() if r["caller_hash"] in hashes}
    assert len(mine) == CALLS
    for i, d in enumerate(drivers):
        row = mine[i]
        assert row["outcome"] == "accepted", dict(row)
        assert row["end_reason"].startswith("caller hung up"), dict(row)
        rec = recordings[row["id"]]
        assert rec["status"] == "complete"
        frames = service.frames(rec["id"])
        # Its own caller's audio: exactly while two-party, in the stream once the agent mixes.
        span = find_in_recording(frames[:40], d.call.rtp)
        assert span is not None and span.first.at >= d.marks["key"] - 0.2
        lawful = [
            s for s in d.call.rtp.sent if s.index >= 0 and s.on_time and s.at > d.marks["key"] + 0.3
        ]
        lawful = [s for s in lawful if s.at < d.marks["hang_up"] - 0.6]
        share = found_in_stream(frames, lawful)
        gap = max(b.at - a.at for a, b in itertools.pairwise(d.call.rtp.sent))
        assert share >= MIXED_SHARE, (
            f"call {i}: {share:.1%} of its audio recorded; sender gap {gap:.3f} s"
        )
        # Set-up as the caller lives it: INVITE out, first prompt packet in.
        invite = d.call.run.invite_sent_at() if d.call.run else None
        assert invite is not None and heard(d.call.rtp.received)
        bench.setup_ms.append((d.call.rtp.received[0].wall - invite) * 1000)
    log = service.log_text()
    assert "set-up failed" not in log and "Channel not in Stasis" not in log
    assert bench.pbx.leftovers() == ([], []) or _settles(bench.pbx)


def _settles(pbx: Asterisk) -> bool:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if pbx.leftovers() == ([], []):
            return True
        time.sleep(0.1)
    return False


def test_set_up_time_report(bench: Bench, capsys: pytest.CaptureFixture[str]) -> None:
    """Prints (and checks loosely) INVITE → first prompt RTP over every call above."""
    times = sorted(bench.setup_ms)
    assert len(times) == CALLS * ROUNDS
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    report = {
        "calls": len(times),
        "concurrent": CALLS,
        "setup_ms_p50": round(p50, 1),
        "setup_ms_p99": round(p99, 1),
        "setup_ms_max": round(times[-1], 1),
    }
    with capsys.disabled():
        print(
            f"\nset-up (INVITE -> first prompt RTP at the caller), {CALLS} calls at once x "
            f"{ROUNDS} rounds on Asterisk 22: p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
            f"max {times[-1]:.0f} ms"
        )
    # Each caller pressed one key. Asterisk drops the caller's audio while it handles a key and
    # carries the gap in sequence numbers on to the service (docs/asterisk.md, the counters): a
    # call's "lost" RTP, filled with silence, is that and nothing more on this loopback.
    lost = sorted(int(n) for n in re.findall(r": rtp lost (\d+) ", bench.service.log_text()))
    assert len(lost) >= CALLS * ROUNDS, f"{len(lost)} calls logged their RTP losses"
    report["rtp_frames_lost_per_call"] = {"min": lost[0], "median": statistics.median(lost)}
    report["rtp_frames_lost_per_call"]["max"] = lost[-1]
    with capsys.disabled():
        print(
            f"RTP frames filled with silence per call (one key pressed in each): "
            f"min {lost[0]}, median {statistics.median(lost):g}, max {lost[-1]}"
        )
    target = os.environ.get("IVR_ASTERISK_REPORT")
    if target:
        Path(target).write_text(json.dumps(report, indent=2) + "\n")
    assert p99 < 2000, report  # a set-up the caller would notice as dead air
    assert statistics.median(lost) <= 10, report  # a key's worth (8 or 9 in every call seen so far)
