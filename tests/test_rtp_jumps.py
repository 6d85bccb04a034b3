"""RTP sequence and timestamp jumps are counted gaps (issue 12.1), never a new baseline.

Before: one packet 200 sequence numbers ahead became the baseline, so the next ~200 real
packets were "late" and dropped (4 s of audio replaced by silence); one packet whose timestamp
ran 59 s ahead moved media time by 59 s (the recording stretched by 59 s of silence).
"""

from __future__ import annotations

import itertools

from ivr.harness.fake_asterisk import build_rtp
from ivr.service import ARI
from media.rtp import JitterBuffer, RtpPacket
from storage.catalog import RecordingStatus
from tests.test_asterisk_e2e import EMERGENCY_LINE, pbx, place, until
from tests.test_rtp import SSRC, assert_accounted, payload_for, push_all, stream_packet

__all__ = ["pbx"]


def real_payloads(frames) -> list[int]:
    return [int.from_bytes(f.payload[:4], "big") for f in frames if not f.filled]


def test_one_packet_far_ahead_is_dropped_not_a_new_baseline() -> None:
    for ahead in (5, 90, 200, 999, 30_000, 40_000):
        jb = JitterBuffer(window=3)
        packets = [stream_packet(i) for i in range(100)]
        wild = stream_packet(50 + ahead)
        out = push_all(jb, [*packets[:50], wild, *packets[50:]])
        assert real_payloads(out) == list(range(100)), ahead
        assert [f.timestamp_ms for f in out] == [20 * i for i in range(100)]
        assert (jb.stats.jumps, jb.stats.late, jb.stats.lost, jb.stats.resyncs) == (1, 0, 0, 0)
        assert_accounted(jb)


def test_one_packet_with_a_wild_timestamp_does_not_stretch_media_time() -> None:
    for ahead_ticks in (59 * 8000, 3 * 8000, 2**31 - 1, 2**31 + 5):
        jb = JitterBuffer(window=3)
        packets = [stream_packet(i) for i in range(100)]
        p = packets[50]
        packets[50] = RtpPacket(
            0, p.sequence, (p.timestamp + ahead_ticks) % 2**32, SSRC, False, p.payload
        )
        out = push_all(jb, packets)
        assert real_payloads(out) == [i for i in range(100) if i != 50]
        assert [f.timestamp_ms for f in out] == [20 * i for i in range(100)], ahead_ticks
        assert (jb.stats.jumps, jb.stats.lost) == (1, 1)  # the frame is a counted gap
        assert jb.gaps == [(1000, 20)]
        assert_accounted(jb)


def test_a_timestamp_base_change_the_stream_follows_moves_media_time_by_the_sequence() -> None:
    jb = JitterBuffer(window=3)
    packets = [stream_packet(i) for i in range(50)]
    packets += [stream_packet(i, base_ts=50_000 + 59 * 8000) for i in range(50, 100)]
    out = push_all(jb, packets)
    assert real_payloads(out) == list(range(100))
    assert [f.timestamp_ms for f in out] == [20 * i for i in range(100)]
    assert jb.stats.resyncs == 1 and jb.stats.jumps == 0


def test_a_stream_that_jumps_every_packet_neither_stretches_nor_floods() -> None:
    jb = JitterBuffer(window=3)
    packets = [stream_packet(i) for i in range(10)]
    packets += [stream_packet(10 + 150 * i) for i in range(500)]  # each 3 s after the last
    out = push_all(jb, packets)
    assert out[-1].timestamp_ms <= 10 * 20 + 2000
    assert jb.stats.jumps + jb.stats.late == 499  # late: wrapped to just behind
    times = [f.timestamp_ms for f in out]
    assert all(b - a >= 20 for a, b in itertools.pairwise(times))
    assert_accounted(jb)


def test_an_outage_the_stream_follows_keeps_its_real_length() -> None:
    # Sequence numbers and timestamps agree: 3 s missing, then the stream goes on.
    jb = JitterBuffer(window=3)
    order = list(range(10)) + list(range(160, 170))
    out = push_all(jb, [stream_packet(i) for i in order])
    assert [f.timestamp_ms for f in out] == [20 * i for i in order]
    assert jb.stats.jumps == 0 and jb.gaps == [(200, 3000)]


def test_a_loss_burst_at_the_very_end_is_still_taken() -> None:
    jb = JitterBuffer(window=3)
    out = push_all(jb, [stream_packet(i) for i in [*range(20), 30]])
    assert real_payloads(out) == [*range(20), 30] and jb.stats.lost == 10
    assert jb.stats.jumps == 0
    assert payload_for(30) == out[-1].payload


async def test_rtp_jumps_through_the_service_keep_the_recording_true(pbx) -> None:
    fake, app = pbx
    call = await place(fake, app, EMERGENCY_LINE)
    await call.talk(1.0)
    peer = call.fake.media
    # One packet far ahead in sequence (not consuming a slot), one 59 s ahead in time (its
    # slot is lost), then the stream goes on.
    await call.fake.inject_rtp(
        build_rtp(0, peer.sequence + 200, peer.timestamp, peer.ssrc, bytes(160))
    )
    await call.fake.inject_rtp(
        build_rtp(0, peer.sequence, peer.timestamp + 59 * 8000, peer.ssrc, bytes(160))
    )
    peer.sequence += 1
    peer.timestamp += 160
    await call.talk(1.0)
    leg = call.ari.rtp
    await until(lambda: leg.jitter.stats.jumps == 2, "the jumps counted")
    row = await call.hang_up()
    assert row.status is RecordingStatus.COMPLETE
    assert 1950 <= row.duration_ms <= 2100, row.duration_ms  # not 61 s
    assert call.session.stats.frames_stored == 101  # 100 real frames, 1 silence-filled
    assert leg.jitter.stats.lost == 1 and leg.jitter.stats.late == 0
    counters = app[ARI].counters
    assert counters["rtp_jumps"] == 2 and counters["rtp_frames_lost"] == 1
