"""RTP packets, the outgoing RTP numbering, the receive jitter buffer and RFC 4733 DTMF.

The jitter buffer decides what ends up in recordings, so its tests pin down exact frame
indices, media timestamps and loss reports rather than just "something came out".
"""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.dtmf import (
    EVENT_DIGITS,
    DtmfDetector,
    TelephoneEvent,
    build_telephone_event,
    parse_telephone_event,
)
from media.rtp import (
    Frame,
    JitterBuffer,
    RtpError,
    RtpPacket,
    RtpSender,
    build_rtp,
    classify,
    parse_rtp,
)
from tests.from_source import from_source, values

SSRC = 0x1234_5678


def payload_for(i: int) -> bytes:
    """A 160-byte payload that identifies packet ``i``, so order checks compare real data."""
    return i.to_bytes(4, "big") + bytes(156)


def stream_packet(
    i: int, *, base_seq: int = 1000, base_ts: int = 50_000, ssrc: int = SSRC
) -> RtpPacket:
    """Packet ``i`` of a regular 20 ms PCMU stream (sequence and timestamp wrap)."""
    return RtpPacket(
        payload_type=0,
        sequence=(base_seq + i) % 65536,
        timestamp=(base_ts + 160 * i) % 2**32,
        ssrc=ssrc,
        marker=i == 0,
        payload=payload_for(i),
    )


def push_all(jb: JitterBuffer, packets: list[RtpPacket], *, flush: bool = True) -> list[Frame]:
    out: list[Frame] = []
    for pkt in packets:
        out.extend(jb.push(pkt))
    if flush:
        out.extend(jb.flush())
    return out


def assert_accounted(jb: JitterBuffer) -> None:
    """After a flush every received packet is released, or dropped for a counted reason."""
    s = jb.stats
    assert len(jb) == 0
    assert s.received == (s.released - s.lost + s.duplicates + s.late + s.foreign_ssrc + s.jumps)


# --- packets ----------------------------------------------------------------------------------

packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 65535),
    timestamp=st.integers(0, 2**32 - 1),
    ssrc=st.integers(0, 2**32 - 1),
    marker=st.booleans(),
    payload=st.binary(max_size=400),
)


@given(packets)
def test_build_then_parse_round_trips(pkt: RtpPacket) -> None:
    data = build_rtp(pkt)
    assert len(data) == 12 + len(pkt.payload)
    assert data[0] == 0x80  # version 2, no padding/extension/CSRC
    assert parse_rtp(data) == pkt


def test_build_matches_the_documented_header_layout() -> None:
    pkt = RtpPacket(0, 0x0102, 0x03040506, 0x0708090A, True, b"\xff\xfe")
    assert build_rtp(pkt) == bytes.fromhex("8080 0102 03040506 0708090a fffe")


@pytest.mark.parametrize(
    "field",
    [
        {"payload_type": 128},
        {"sequence": 65536},
        {"timestamp": 2**32},
        {"ssrc": -1},
    ],
)
def test_build_rejects_out_of_range_fields(field: dict[str, int]) -> None:
    values = {"payload_type": 0, "sequence": 0, "timestamp": 0, "ssrc": 0} | field
    with pytest.raises(ValueError, match=next(iter(field))):
        build_rtp(RtpPacket(marker=False, payload=b"", **values))


def header(byte0: int = 0x80, byte1: int = 0) -> bytes:
    return struct.pack("!BBHII", byte0, byte1, 1, 2, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too short: 0 bytes"),
        (header()[:11], "too short: 11 bytes"),
        (header(0x00), "version 0"),
        (header(0x40), "version 1"),
        (header(0xC0), "version 3"),
        (header(0x82) + bytes(4), "CSRC count 2 needs a 20-byte header"),
        (header(0x8F) + bytes(40), "CSRC count 15"),
        (header(0x90) + b"\xbe\xde", "extension flag set but only 2 bytes"),
        (header(0x90) + b"\xbe\xde\x00\x02" + bytes(7), "extension of 2 words overruns"),
        (header(0x91) + bytes(4), "extension flag set but only 0 bytes follow the CSRCs"),
        (header(0x91) + bytes(4) + b"\xbe\xde\x00\x01", "extension of 1 words overruns"),
        (header(0xA0), "no byte left for the padding count"),
        (header(0xA0) + b"\x01\x02\x00", "invalid padding length 0"),
        (header(0xA0) + b"\x01\x02\x04", "invalid padding length 4: 3 bytes"),
    ],
)
def test_malformed_packets_are_rejected_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(RtpError, match=reason):
        parse_rtp(data)


def test_rtp_error_is_a_value_error() -> None:
    assert issubclass(RtpError, ValueError)


def test_csrcs_extension_and_padding_are_skipped() -> None:
    csrcs = struct.pack("!II", 0xAAAA_AAAA, 0xBBBB_BBBB)
    extension = b"\xbe\xde\x00\x02" + b"\x11\x22\x33\x44" + b"\x55\x66\x77\x88"
    payload = bytes(range(160))
    padding = b"\x00\x00\x03"
    # V=2, P=1, X=1, CC=2; marker set, PT 0.
    data = struct.pack("!BBHII", 0xB2, 0x80, 65535, 2**32 - 1, SSRC) + csrcs + extension
    pkt = parse_rtp(data + payload + padding)
    assert pkt == RtpPacket(0, 65535, 2**32 - 1, SSRC, True, payload)


def test_empty_extension_and_full_padding_leave_an_empty_payload() -> None:
    data = header(0x90, 8) + b"\x10\x00\x00\x00"
    assert parse_rtp(data).payload == b""
    assert parse_rtp(header(0xA0) + b"\x00\x00\x03").payload == b""


def test_classify_separates_audio_dtmf_and_other() -> None:
    def pt(n: int) -> RtpPacket:
        return RtpPacket(n, 0, 0, 0, False, b"")

    assert classify(pt(0)) == "audio"
    assert classify(pt(101)) == "dtmf"
    assert classify(pt(96), dtmf_pt=96) == "dtmf"
    assert classify(pt(101), dtmf_pt=96) == "other"
    assert classify(pt(8)) == "other"  # PCMA is not what we asked Asterisk for
    assert classify(pt(13)) == "other"  # comfort noise


# --- sender -----------------------------------------------------------------------------------


def test_sender_numbers_packets_from_random_initial_values() -> None:
    sender = RtpSender(rng=random.Random(7))
    again = RtpSender(rng=random.Random(7))
    assert (sender.ssrc, sender.sequence, sender.timestamp) == (
        again.ssrc,
        again.sequence,
        again.timestamp,
    )
    first_seq, first_ts = sender.sequence, sender.timestamp
    frames = [bytes([i]) * 160 for i in range(5)]
    parsed = [parse_rtp(sender.packet(f)) for f in frames]
    assert [p.sequence for p in parsed] == [(first_seq + i) % 65536 for i in range(5)]
    assert [p.timestamp for p in parsed] == [(first_ts + 160 * i) % 2**32 for i in range(5)]
    assert {p.ssrc for p in parsed} == {sender.ssrc}
    assert [p.marker for p in parsed] == [True, False, False, False, False]
    assert [p.payload for p in parsed] == frames
    assert {p.payload_type for p in parsed} == {0}


def test_sender_talkspurt_sets_marker_and_skips_the_silent_time() -> None:
    sender = RtpSender(rng=random.Random(1))
    a = parse_rtp(sender.packet(bytes(160)))
    sender.start_talkspurt(silent_frames=10)
    b = parse_rtp(sender.packet(bytes(160)))
    c = parse_rtp(sender.packet(bytes(160)))
    assert b.marker and not c.marker
    assert b.sequence == (a.sequence + 1) % 65536  # no packets were sent in the pause
    assert b.timestamp == (a.timestamp + 160 * 11) % 2**32


def test_sender_wraps_sequence_and_timestamp() -> None:
    sender = RtpSender(rng=random.Random(0), ssrc=5)
    sender.sequence, sender.timestamp = 65535, 2**32 - 160
    a, b = (parse_rtp(sender.packet(bytes(160))) for _ in range(2))
    assert (a.sequence, a.timestamp) == (65535, 2**32 - 160)
    assert (b.sequence, b.timestamp) == (0, 0)
    assert a.ssrc == 5


def test_sender_rejects_frames_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="160 bytes"):
        RtpSender(rng=random.Random(0)).packet(bytes(159))


def test_sender_feeds_the_jitter_buffer() -> None:
    sender = RtpSender(rng=random.Random(3))
    jb = JitterBuffer()
    frames = [payload_for(i) for i in range(20)]
    out = push_all(jb, [parse_rtp(sender.packet(f)) for f in frames])
    assert [f.payload for f in out] == frames
    assert [f.timestamp_ms for f in out] == [20 * i for i in range(20)]


# --- jitter buffer ----------------------------------------------------------------------------


def test_in_order_stream_passes_through_with_media_timestamps() -> None:
    jb = JitterBuffer(window=3)
    out: list[Frame] = []
    released_after: list[int] = []
    for i in range(10):
        out.extend(jb.push(stream_packet(i)))
        released_after.append(len(out))
    # The first frame waits for `window` newer packets (a reordered start is not lost);
    # after that every in-order packet comes straight out.
    assert released_after == [0, 0, 0, 4, 5, 6, 7, 8, 9, 10]
    assert jb.flush() == []
    assert out == [Frame(i, 20 * i, payload_for(i), False) for i in range(10)]
    assert jb.stats.received == jb.stats.released == 10
    assert jb.gaps == []
    assert jb.ssrc == SSRC
    assert_accounted(jb)


def test_window_zero_releases_immediately() -> None:
    jb = JitterBuffer(window=0)
    assert [f.seq_index for f in jb.push(stream_packet(0))] == [0]
    assert [f.seq_index for f in jb.push(stream_packet(1))] == [1]


def test_reordering_within_the_window_is_fixed() -> None:
    order = [1, 0, 2, 5, 3, 4, 6, 9, 8, 7, 10, 11]
    jb = JitterBuffer(window=3)
    out = push_all(jb, [stream_packet(i) for i in order])
    assert [f.payload for f in out] == [payload_for(i) for i in range(12)]
    assert [f.timestamp_ms for f in out] == [20 * i for i in range(12)]
    assert not any(f.filled for f in out)
    assert (jb.stats.lost, jb.stats.late) == (0, 0)
    assert_accounted(jb)


def test_duplicates_are_dropped() -> None:
    order = [0, 1, 1, 2, 3, 2, 4, 0, 5, 5]
    jb = JitterBuffer(window=3)
    out = push_all(jb, [stream_packet(i) for i in order])
    assert [f.payload for f in out] == [payload_for(i) for i in range(6)]
    # 1 and 5 while buffered, 2 after release, 0 long after release: all duplicates.
    assert jb.stats.duplicates == 4
    assert jb.stats.late == 0
    assert_accounted(jb)


def test_loss_is_filled_with_silence_at_the_right_timestamps() -> None:
    jb = JitterBuffer(window=3)
    got: list[list[Frame]] = [jb.push(stream_packet(i)) for i in [0, 1, 2, 3, 6, 7, 8, 9]]
    # Slot 4 is given up when 8 arrives (4 newer packets than the hole), slot 5 when 9 does.
    assert [f.seq_index for f in got[6]] == [4]
    assert [f.seq_index for f in got[7]] == [5, 6, 7, 8, 9]
    out = [f for frames in got for f in frames] + jb.flush()
    assert [f.seq_index for f in out] == list(range(10))
    assert [f.timestamp_ms for f in out] == [20 * i for i in range(10)]
    filled = [f for f in out if f.filled]
    assert [(f.seq_index, f.timestamp_ms) for f in filled] == [(4, 80), (5, 100)]
    assert all(f.payload == b"\xff" * 160 for f in filled)
    assert jb.stats.lost == 2
    assert jb.gaps == [(80, 40)]
    assert_accounted(jb)


def test_separate_losses_are_separate_gaps() -> None:
    jb = JitterBuffer(window=2)
    push_all(jb, [stream_packet(i) for i in range(20) if i not in (3, 10, 11, 12)])
    assert jb.gaps == [(60, 20), (200, 60)]
    assert jb.stats.lost == 4


def test_packet_arriving_after_its_slot_was_filled_is_late() -> None:
    jb = JitterBuffer(window=3)
    out = push_all(jb, [stream_packet(i) for i in [0, 1, 2, 3, 5, 6, 7, 8]], flush=False)
    assert out[4].filled and out[4].seq_index == 4
    assert jb.push(stream_packet(4)) == []
    out += jb.push(stream_packet(9)) + jb.flush()
    assert [f.seq_index for f in out] == list(range(10))
    assert [f.payload for f in out if not f.filled] == [payload_for(i) for i in range(10) if i != 4]
    assert (jb.stats.late, jb.stats.lost, jb.stats.duplicates) == (1, 1, 0)
    assert_accounted(jb)


def test_packets_older_than_the_window_before_the_start_are_late() -> None:
    jb = JitterBuffer(window=3)
    out = push_all(jb, [stream_packet(i) for i in [5, 6, 0, 7, 8]])
    assert [f.payload for f in out] == [payload_for(i) for i in [5, 6, 7, 8]]
    assert jb.stats.late == 1


def test_foreign_ssrc_is_dropped() -> None:
    jb = JitterBuffer()
    packets = []
    for i in range(8):
        packets.append(stream_packet(i))
        packets.append(stream_packet(i + 100, base_seq=7, base_ts=9, ssrc=SSRC + 1))
    out = push_all(jb, packets)
    assert [f.payload for f in out] == [payload_for(i) for i in range(8)]
    assert jb.stats.foreign_ssrc == 8
    assert jb.ssrc == SSRC
    assert_accounted(jb)


@pytest.mark.parametrize(
    ("base_seq", "base_ts"),
    [(65530, 50_000), (1000, 2**32 - 800), (65533, 2**32 - 480)],
    ids=["seq-wrap", "ts-wrap", "both-wrap"],
)
def test_sequence_and_timestamp_wrap(base_seq: int, base_ts: int) -> None:
    order = [0, 1, 3, 2, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15]  # 7 lost, 2/3 swapped
    jb = JitterBuffer(window=3)
    out = push_all(jb, [stream_packet(i, base_seq=base_seq, base_ts=base_ts) for i in order])
    assert [f.seq_index for f in out] == list(range(16))
    assert [f.timestamp_ms for f in out] == [20 * i for i in range(16)]
    assert [f.seq_index for f in out if f.filled] == [7]
    assert jb.gaps == [(140, 20)]
    assert jb.stats.resyncs == 0


def test_resync_on_a_huge_sequence_jump_with_a_new_timestamp_base() -> None:
    jb = JitterBuffer(window=3)
    before = [stream_packet(i) for i in range(10)]
    # The far end restarted: new sequence and timestamp bases, same SSRC.
    after = [stream_packet(i, base_seq=40_000, base_ts=7) for i in range(100, 110)]
    out = push_all(jb, before + after)
    assert jb.stats.resyncs == 1
    assert jb.stats.lost == 0  # no seconds of silence invented
    assert [f.payload for f in out] == [p.payload for p in before + after]
    assert [f.seq_index for f in out] == list(range(20))
    # The timestamp difference is meaningless, so media time just continues.
    assert [f.timestamp_ms for f in out] == [20 * i for i in range(20)]
    assert jb.gaps == []
    assert_accounted(jb)


def test_resync_after_an_outage_keeps_the_real_elapsed_time() -> None:
    jb = JitterBuffer(window=3)
    # 150 packets (3 s) missing, but sequence and timestamp still agree: an outage.
    order = list(range(10)) + list(range(160, 170))
    out = push_all(jb, [stream_packet(i) for i in order])
    assert jb.stats.resyncs == 1
    assert jb.stats.lost == 0
    assert [f.seq_index for f in out] == list(range(20))
    assert [f.timestamp_ms for f in out] == [20 * i for i in order]
    assert jb.gaps == [(200, 3000)]
    assert_accounted(jb)


def test_a_gap_up_to_two_seconds_is_filled_not_resynced() -> None:
    jb = JitterBuffer(window=3)
    order = list(range(5)) + list(range(105, 110))  # exactly 100 packets (2 s) missing
    out = push_all(jb, [stream_packet(i) for i in order])
    assert jb.stats.resyncs == 0
    assert jb.stats.lost == 100
    assert [f.timestamp_ms for f in out] == [20 * i for i in range(110)]
    assert jb.gaps == [(100, 2000)]


def test_resync_on_a_huge_backward_sequence_jump() -> None:
    jb = JitterBuffer(window=3)
    before = [stream_packet(i, base_seq=30_000) for i in range(6)]
    after = [stream_packet(i, base_seq=20_000, base_ts=123) for i in range(6, 12)]
    out = push_all(jb, before + after)
    assert jb.stats.resyncs == 1
    assert jb.stats.late == 0
    assert [f.payload for f in out] == [payload_for(i) for i in range(12)]
    assert [f.timestamp_ms for f in out] == [20 * i for i in range(12)]


def test_timestamp_jump_with_continuous_sequence_is_a_resync() -> None:
    jb = JitterBuffer(window=3)
    packets = [stream_packet(i) for i in range(6)]
    packets += [
        RtpPacket(0, 1000 + i, (2**31 + 160 * i) % 2**32, SSRC, i == 6, payload_for(i))
        for i in range(6, 12)
    ]
    out = push_all(jb, packets)
    assert jb.stats.resyncs == 1
    assert [f.timestamp_ms for f in out] == [20 * i for i in range(12)]
    assert [f.payload for f in out] == [payload_for(i) for i in range(12)]


def test_flush_releases_the_tail() -> None:
    jb = JitterBuffer(window=3)
    assert jb.push(stream_packet(1)) == []
    assert jb.push(stream_packet(0)) == []
    assert len(jb) == 2
    out = jb.flush()
    assert [(f.seq_index, f.timestamp_ms, f.payload) for f in out] == [
        (0, 0, payload_for(0)),
        (1, 20, payload_for(1)),
    ]
    assert jb.flush() == []

    jb = JitterBuffer(window=3)
    out = push_all(jb, [stream_packet(i) for i in [0, 1, 2, 3, 4, 6]], flush=False)
    assert len(out) == 5
    tail = jb.flush()
    assert [(f.seq_index, f.filled) for f in tail] == [(5, True), (6, False)]
    assert jb.gaps == [(100, 20)]
    assert_accounted(jb)


def test_push_refuses_telephone_events() -> None:
    jb = JitterBuffer()
    with pytest.raises(ValueError, match="PT 101"):
        jb.push(RtpPacket(101, 1, 1, SSRC, False, build_telephone_event(1, False, 10, 160)))
    assert jb.stats.received == 0


def test_custom_silence_and_frame_size() -> None:
    jb = JitterBuffer(window=1, frame_bytes=80, silence=0xD5)
    packets = [RtpPacket(0, i, 80 * i, SSRC, False, bytes([i]) * 80) for i in (0, 1, 3, 4)]
    out = push_all(jb, packets)
    assert [f.timestamp_ms for f in out] == [0, 10, 20, 30, 40]
    assert out[2].filled and out[2].payload == b"\xd5" * 80


@settings(max_examples=300)
@given(
    n=st.integers(1, 80),
    window=st.integers(0, 6),
    base_seq=st.integers(0, 65535),
    base_ts=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_any_permutation_within_the_window_is_restored_exactly(
    n: int, window: int, base_seq: int, base_ts: int, data: st.DataObject
) -> None:
    # Delaying each packet by at most `window` places: no packet arrives after one more than
    # `window` newer than itself, which is exactly what the window promises to absorb.
    delays = data.draw(st.lists(st.integers(0, window), min_size=n, max_size=n))
    order = sorted(range(n), key=lambda i: (i + delays[i], i))
    jb = JitterBuffer(window=window)
    out = push_all(jb, [stream_packet(i, base_seq=base_seq, base_ts=base_ts) for i in order])
    assert out == [Frame(i, 20 * i, payload_for(i), False) for i in range(n)]
    assert jb.stats.received == jb.stats.released == n
    assert jb.gaps == []


@settings(max_examples=300)
@given(
    events=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 3)), min_size=1, max_size=120),
    window=st.integers(0, 5),
    base_seq=st.integers(0, 65535),
)
def test_any_loss_duplication_and_reordering_keeps_the_output_consistent(
    events: list[tuple[int, int]], window: int, base_seq: int
) -> None:
    # Arbitrary arrivals of packets 0..60 (repeats, gaps, any order): the output must still be
    # one contiguous, strictly timed stream in which every received packet is accounted for.
    jb = JitterBuffer(window=window)
    out = push_all(jb, [stream_packet(i, base_seq=base_seq) for i, _ in events])
    assert [f.seq_index for f in out] == list(range(len(out)))
    first = out[0].timestamp_ms
    assert [f.timestamp_ms - first for f in out] == [20 * i for i in range(len(out))]
    real = [int.from_bytes(f.payload[:4], "big") for f in out if not f.filled]
    assert real == sorted(set(real))
    assert jb.stats.resyncs == 0
    assert_accounted(jb)


def test_timestamp_running_ahead_is_a_sender_pause_and_kept() -> None:
    # Silence suppression: sequence continues, timestamp skips 1 s; not loss, not a restart.
    jb = JitterBuffer(window=3)
    packets = [stream_packet(i) for i in range(5)]
    packets += [
        RtpPacket(0, 1000 + i, 50_000 + 160 * (i + 50), SSRC, i == 5, payload_for(i))
        for i in range(5, 10)
    ]
    out = push_all(jb, packets)
    assert [f.timestamp_ms for f in out] == [0, 20, 40, 60, 80, 1100, 1120, 1140, 1160, 1180]
    assert (jb.stats.resyncs, jb.stats.lost, jb.gaps) == (0, 0, [])


def test_timestamp_lagging_behind_the_sequence_never_overlaps_frames() -> None:
    jb = JitterBuffer(window=3)
    packets = [stream_packet(i) for i in range(5)]
    # From packet 5 on the timestamp is 0.5 s behind where the sequence number puts it.
    packets += [
        RtpPacket(0, 1000 + i, 50_000 + 160 * (i - 25), SSRC, False, payload_for(i))
        for i in range(5, 10)
    ]
    out = push_all(jb, packets)
    assert [f.timestamp_ms for f in out] == [20 * i for i in range(10)]


hostile_arrival = st.tuples(
    st.integers(-3, 3),  # sequence offset from the regular position
    st.sampled_from([0, 0, 0, 1, -1, 7, 2**31, -(2**20)]),  # timestamp distortion (ticks)
    st.sampled_from([0, 0, 0, 0, 50, -50, 500, -1500, 30_000]),  # sequence jump
    st.booleans(),  # foreign SSRC
)
hostile_arrivals = st.lists(hostile_arrival, min_size=1, max_size=150)

REGULAR = (0, 0, 0, False)


def one_disturbance(field_and_arrival: tuple[int, tuple[int, int, int, bool]]) -> tuple:
    """The arrival regular but for one of its disturbances (or all of them, for field 4)."""
    field, arrival = field_and_arrival
    if field == 4:
        return arrival
    return tuple(value if i == field else REGULAR[i] for i, value in enumerate(arrival))


# Streams as they mostly are: about one packet in ten disturbed (one way, or every way as in
# ``hostile_arrivals``), so that the short ways, which take only regular packets, are taken and
# left often.
mostly_regular_arrivals = st.lists(
    st.tuples(st.integers(0, 9), st.tuples(st.integers(0, 4), hostile_arrival)),
    min_size=1,
    max_size=150,
).map(lambda drawn: [one_disturbance(d) if k == 0 else REGULAR for k, d in drawn])


@settings(max_examples=300)
@given(arrivals=hostile_arrivals, window=st.integers(0, 5), base=st.integers(0, 2**32 - 1))
def test_hostile_streams_still_give_contiguous_non_overlapping_frames(
    arrivals: list[tuple[int, int, int, bool]], window: int, base: int
) -> None:
    jb = JitterBuffer(window=window)
    seq, ts = base % 65536, base
    out: list[Frame] = []
    for offset, distortion, jump, foreign in arrivals:
        seq, ts = seq + jump, ts + 160 * jump
        pkt = RtpPacket(
            0,
            (seq + offset) % 65536,
            (ts + 160 * offset + distortion) % 2**32,
            SSRC + foreign,
            False,
            bytes(160),
        )
        out += jb.push(pkt)
        seq, ts = seq + 1, ts + 160
    out += jb.flush()
    assert [f.seq_index for f in out] == list(range(len(out)))
    times = [f.timestamp_ms for f in out]
    assert all(b - a >= 20 for a, b in itertools.pairwise(times))
    assert all(length > 0 for _, length in jb.gaps)
    assert_accounted(jb)


@settings(max_examples=500)
@given(st.binary(max_size=64), st.integers(0, 0x3F))
def test_parse_rejects_garbage_only_with_rtp_error(data: bytes, low_bits: int) -> None:
    # Half the time force version 2 so the deeper checks (CSRC, extension, padding) are hit.
    for candidate in (data, bytes([0x80 | low_bits]) + data[1:]):
        try:
            pkt = parse_rtp(candidate)
        except RtpError:
            continue
        assert len(pkt.payload) <= len(candidate) - 12


# --- DTMF -------------------------------------------------------------------------------------


@given(
    event=st.integers(0, 255),
    end=st.booleans(),
    volume=st.integers(0, 63),
    duration=st.integers(0, 65535),
)
def test_telephone_event_round_trips(event: int, end: bool, volume: int, duration: int) -> None:
    data = build_telephone_event(event, end, volume, duration)
    assert len(data) == 4
    assert parse_telephone_event(data) == TelephoneEvent(event, end, volume, duration)


def test_telephone_event_layout_and_reserved_bit() -> None:
    assert build_telephone_event(11, True, 10, 800) == bytes([11, 0x8A, 0x03, 0x20])
    # The reserved R bit must be ignored on receipt.
    assert parse_telephone_event(bytes([5, 0xCA, 0, 160])) == TelephoneEvent(5, True, 10, 160)
    assert [TelephoneEvent(i, False, 0, 0).digit for i in range(17)] == [*EVENT_DIGITS, None]


@pytest.mark.parametrize("size", [0, 3, 5, 8])
def test_telephone_event_rejects_bad_lengths(size: int) -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        parse_telephone_event(bytes(size))


def test_build_telephone_event_rejects_out_of_range_fields() -> None:
    with pytest.raises(ValueError, match="volume"):
        build_telephone_event(1, False, 64, 0)
    with pytest.raises(ValueError, match="event"):
        build_telephone_event(256, False, 0, 0)
    with pytest.raises(ValueError, match="duration"):
        build_telephone_event(1, False, 0, 65536)


def key_press(event: int, ts: int, *, ends: int = 3) -> list[tuple[int, TelephoneEvent]]:
    """Packets of one key press as Asterisk sends them: start, continuations, end x ``ends``."""
    packets = [(ts, TelephoneEvent(event, False, 10, d)) for d in (160, 320, 480)]
    packets += [(ts, TelephoneEvent(event, True, 10, 640))] * ends
    return packets


def feed_all(det: DtmfDetector, packets: list[tuple[int, TelephoneEvent]]) -> list[str]:
    return [d for ts, ev in packets if (d := det.feed(ts, ev)) is not None]


def test_a_digit_with_three_end_packets_is_reported_once() -> None:
    det = DtmfDetector()
    results = [det.feed(ts, ev) for ts, ev in key_press(5, 1000)]
    assert results == [None, None, None, "5", None, None]
    assert det.flush() is None


def test_the_same_digit_twice_is_reported_twice() -> None:
    det = DtmfDetector()
    assert feed_all(det, key_press(1, 1000) + key_press(1, 5000)) == ["1", "1"]


def test_every_event_code_maps_to_its_digit() -> None:
    det = DtmfDetector()
    packets = [p for i in range(16) for p in key_press(i, 1000 + 4000 * i)]
    assert "".join(feed_all(det, packets)) == EVENT_DIGITS


def test_a_digit_without_end_packets_is_reported_when_the_next_starts() -> None:
    det = DtmfDetector()
    first = key_press(2, 1000, ends=0)
    assert [det.feed(ts, ev) for ts, ev in first] == [None, None, None]
    second = key_press(3, 9000)
    assert [det.feed(ts, ev) for ts, ev in second] == ["2", None, None, "3", None, None]
    assert det.flush() is None


def test_end_packet_that_also_closes_a_previous_event_reports_both() -> None:
    det = DtmfDetector()
    det.feed(1000, TelephoneEvent(4, False, 10, 160))
    # Only the end packets of the next key press got through.
    assert det.feed(2000, TelephoneEvent(7, True, 10, 800)) == "47"
    assert det.feed(2000, TelephoneEvent(7, True, 10, 800)) is None


def test_flush_reports_a_digit_whose_end_never_came() -> None:
    det = DtmfDetector()
    assert feed_all(det, key_press(10, 1000, ends=0)) == []
    assert det.flush() == "*"
    assert det.flush() is None


def test_stragglers_of_a_finished_event_are_ignored() -> None:
    det = DtmfDetector()
    packets = key_press(11, 1000) + key_press(0, 3000)
    # A delayed continuation and end packet of the first press arrive during the second.
    packets.insert(7, (1000, TelephoneEvent(11, False, 10, 480)))
    packets.insert(9, (1000, TelephoneEvent(11, True, 10, 640)))
    assert feed_all(det, packets) == ["#", "0"]


def test_non_digit_events_produce_nothing_but_close_the_previous_digit() -> None:
    det = DtmfDetector()
    packets = key_press(9, 1000, ends=0) + key_press(16, 2000)  # 16 = flash
    assert feed_all(det, packets) == ["9"]
    assert det.flush() is None


# --- the jitter buffer's short ways: push_plain and the ring of released frames ---------------


def plain_datagrams(arrivals: list[tuple[int, int, int, bool]], base: int) -> list[bytes]:
    """Datagrams of a stream that is mostly regular, with the given disturbances: sequence
    offsets, timestamp distortions, jumps and foreign SSRCs (as in the hostile-stream test),
    some with the marker bit or padding, which push_plain must leave to push."""
    seq, ts = base % 65536, base
    out: list[bytes] = []
    for n, (offset, distortion, jump, foreign) in enumerate(arrivals):
        seq, ts = seq + jump, ts + 160 * jump
        data = build_rtp(
            RtpPacket(
                0,
                (seq + offset) % 65536,
                (ts + 160 * offset + distortion) % 2**32,
                SSRC + foreign,
                n % 17 == 5,
                n.to_bytes(4, "big") + bytes(156),
            )
        )
        if n % 23 == 7:  # the same audio with two bytes of padding
            data = bytes([data[0] | 0x20]) + data[1:] + b"\x00\x02"
        out.append(data)
        seq, ts = seq + 1, ts + 160
    return out


@settings(max_examples=300)
@given(
    arrivals=st.one_of(mostly_regular_arrivals, hostile_arrivals),
    window=st.integers(0, 5),
    base=st.integers(0, 2**32 - 1),
)
def test_push_plain_changes_nothing_but_the_cost(
    arrivals: list[tuple[int, int, int, bool]], window: int, base: int
) -> None:
    # The same datagrams, one buffer through push(parse_rtp(...)) only, the other through
    # push_plain first: the same frames, gaps and counters, packet by packet.
    slow, fast = JitterBuffer(window=window), JitterBuffer(window=window)
    taken_plain = 0
    for data in plain_datagrams(arrivals, base):
        expected = slow.push(parse_rtp(data))
        ms = fast.push_plain(data)
        if ms >= 0:
            taken_plain += 1
            got = [Frame(fast.stats.released - 1, ms, data[12:], False)]
        else:
            got = fast.push(parse_rtp(data))
        assert got == expected
        assert fast.stats == slow.stats
    assert fast.flush() == slow.flush()
    assert (fast.stats, fast.gaps) == (slow.stats, slow.gaps)
    if all(a == (0, 0, 0, False) for a in arrivals) and len(arrivals) > window + 2:
        assert taken_plain > 0  # a regular stream does take the short way


def test_push_plain_takes_the_usual_packet_and_nothing_else() -> None:
    jb = JitterBuffer(window=0)
    first = build_rtp(stream_packet(0))
    assert jb.push_plain(first) == -1  # the stream's first packet: the buffer is not started
    jb.push(parse_rtp(first))
    second = stream_packet(1)
    variants = {
        "marker": RtpPacket(0, second.sequence, second.timestamp, SSRC, True, second.payload),
        "dtmf": RtpPacket(101, second.sequence, second.timestamp, SSRC, False, bytes(4)),
        "foreign": RtpPacket(0, second.sequence, second.timestamp, SSRC + 1, False, bytes(160)),
        "skip": RtpPacket(0, second.sequence + 1, second.timestamp + 160, SSRC, False, bytes(1)),
        "pause": RtpPacket(0, second.sequence, second.timestamp + 160, SSRC, False, bytes(1)),
        "empty": RtpPacket(0, second.sequence, second.timestamp, SSRC, False, b""),
    }
    for name, pkt in variants.items():
        before = (jb.stats.received, jb.stats.released)
        assert jb.push_plain(build_rtp(pkt)) == -1, name
        assert (jb.stats.received, jb.stats.released) == before, name
    assert jb.push_plain(build_rtp(RtpPacket(0, 1001, 50_160, SSRC, False, bytes(160)))) == 20
    assert jb.stats.released == 2


source_rtp = from_source("media.rtp")


class DictHistory(source_rtp.JitterBuffer):  # type: ignore[misc]
    """The released-frame history as it was before the ring: a dict and a deque, for
    comparison. Built on the source's buffer, which a class in a test may extend (compiled, the
    buffer may not be: hotpath.py), so the ring compared is the one the service runs."""

    def __init__(self, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.was: dict[int, bool] = {}
        self.order: list[int] = []

    def _remember(self, ext: int, filled: bool) -> None:
        self.was[ext] = filled
        self.order.append(ext)
        if len(self.order) > self._history_size:
            del self.was[self.order.pop(0)]

    def _was_received(self, ext: int) -> bool:
        return self.was.get(ext) is False


@settings(max_examples=300)
@given(
    arrivals=hostile_arrivals,
    window=st.integers(0, 5),
    history=st.integers(0, 6),
    base=st.integers(0, 2**32 - 1),
    replays=st.lists(st.integers(0, 149), max_size=30),
)
def test_the_ring_of_released_frames_tells_duplicates_from_late_packets_as_the_dict_did(
    arrivals: list[tuple[int, int, int, bool]],
    window: int,
    history: int,
    base: int,
    replays: list[int],
) -> None:
    # A short history, so that frames leave it; old datagrams replayed at random points, so
    # that some are duplicates of frames still remembered and some are not.
    datagrams = plain_datagrams(arrivals, base)
    ring, reference = (
        JitterBuffer(window=window, history=history),
        DictHistory(window=window, history=history),
    )
    for n, data in enumerate(datagrams):
        feed = [data] + [datagrams[r] for r in replays if r < n and (r + n) % 3 == 0]
        for one in feed:
            got = [values(f) for f in ring.push(parse_rtp(one))]
            assert got == [values(f) for f in reference.push(source_rtp.parse_rtp(one))]
            assert values(ring.stats) == values(reference.stats)
    assert [values(f) for f in ring.flush()] == [values(f) for f in reference.flush()]


def take_in_runs(jb: JitterBuffer, batch: list[bytes]) -> tuple[list[Frame], int]:
    """``batch`` as the RTP leg takes it: ``push_run`` where it takes a run, else ``push``;
    the frames, and the longest run taken."""
    frames: list[Frame] = []
    i, longest = 0, 0
    while i < len(batch):
        count, first_ms = jb.push_run(batch, i)
        if count:
            first = jb.stats.released - count
            frames += [
                Frame(first + k, first_ms + k * jb.frame_ms, batch[i + k][12:], False)
                for k in range(count)
            ]
            i, longest = i + count, max(longest, count)
        else:
            frames += jb.push(parse_rtp(batch[i]))
            i += 1
    return frames, longest


@settings(max_examples=300)
@given(
    arrivals=st.one_of(mostly_regular_arrivals, hostile_arrivals),
    window=st.integers(0, 5),
    history=st.sampled_from([0, 1, 2, 5, 1024]),
    base=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.integers(1, 12), min_size=1, max_size=8),
    replays=st.lists(st.integers(0, 149), max_size=20),
)
def test_push_run_changes_nothing_but_the_cost(
    arrivals: list[tuple[int, int, int, bool]],
    window: int,
    history: int,
    base: int,
    cuts: list[int],
    replays: list[int],
) -> None:
    # The same datagrams in batches of the given sizes (in turn), old ones replayed among
    # them; one buffer takes each through push(parse_rtp(...)), the other each batch in runs:
    # the same frames, counters and gaps after every batch, and the same duplicates and late
    # packets later (a run longer than the history fills its ring).
    datagrams = plain_datagrams(arrivals, base)
    fed = [
        one
        for n, data in enumerate(datagrams)
        for one in [data] + [datagrams[r] for r in replays if r < n and (r + n) % 5 == 0]
    ]
    slow, fast = (
        JitterBuffer(window=window, history=history),
        JitterBuffer(window=window, history=history),
    )
    i, longest = 0, 0
    for size in itertools.cycle(cuts):
        if i >= len(fed):
            break
        batch = fed[i : i + size]
        i += size
        expected = [frame for data in batch for frame in slow.push(parse_rtp(data))]
        got, run = take_in_runs(fast, batch)
        longest = max(longest, run)
        assert got == expected
        assert (fast.stats, fast.gaps) == (slow.stats, slow.gaps)
    assert fast.flush() == slow.flush()
    assert (fast.stats, fast.gaps) == (slow.stats, slow.gaps)
    if all(a == REGULAR for a in arrivals) and len(arrivals) > 22 and max(cuts) > 1:
        # Packets 8 to 21 have neither marker nor padding: some batch among them is a run.
        assert longest > 1 or replays


def test_push_run_takes_the_batch_up_to_the_first_packet_out_of_line() -> None:
    jb = JitterBuffer(window=0)
    jb.push(stream_packet(0))
    batch = [build_rtp(stream_packet(n)) for n in range(1, 6)]
    batch[3] = build_rtp(RtpPacket(0, 1004, 50_000 + 4 * 160, SSRC, True, bytes(160)))  # marker
    assert jb.push_run(batch) == (3, 20)  # packets 1 to 3, the first 20 ms in
    assert jb.push_run(batch, 3) == (0, -1)  # the marker is push's to take
    assert jb.push(parse_rtp(batch[3]))[0].timestamp_ms == 80
    assert jb.push_run(batch, 4) == (1, 100)
    assert jb.push_run(batch, 5) == (0, -1)  # nothing left
    assert jb.stats.released == 6


def test_history_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="history"):
        JitterBuffer(history=-1)


def test_a_packet_waited_for_is_taken_though_its_ring_slot_holds_an_older_frame() -> None:
    # history 2: frame 3's slot last held frame 1. Packet 3 comes late but within the window,
    # so it is the awaited frame, not a duplicate of what the slot remembers.
    jb = JitterBuffer(window=2, history=2)
    out = push_all(jb, [stream_packet(i) for i in (0, 1, 2, 4, 5, 3)], flush=False)
    assert [f.seq_index for f in out] == [0, 1, 2, 3, 4, 5]
    assert not any(f.filled for f in out)
    assert not out[3].filled and out[3].payload == payload_for(3)
    assert jb.stats.duplicates == 0
    # Frame 1 again, beyond the history now: late, like any packet whose slot was released.
    assert jb.push(stream_packet(1)) == []
    assert (jb.stats.duplicates, jb.stats.late) == (0, 1)
    # Frame 5 again, still remembered: a duplicate.
    assert jb.push(stream_packet(5)) == []
    assert jb.stats.duplicates == 1
