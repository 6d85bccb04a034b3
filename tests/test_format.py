"""The container format: known answer, round trips, and every tamper case it must catch."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.format import (
    CHUNK_LENGTH,
    PREAMBLE,
    FormatError,
    RecordingHeader,
)
from storage.reader import RecordingReader
from storage.writer import EncryptingWriter, WriterClosed
from tests.independent_decrypter import decrypt as independent_decrypt

VECTORS = Path(__file__).parent / "vectors"
KAT = json.loads((VECTORS / "kat-v1.json").read_text())
DEK = os.urandom(32)


class Collect:
    def __init__(self) -> None:
        self.data = bytearray()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data += data
        self.writes.append(data)


def header(rid: str = "rec_test", prefix: bytes | None = None, **kw) -> RecordingHeader:
    fields = dict(
        recording_id=rid,
        tenant_id="acme",
        codec="pcmu",
        sample_rate=8000,
        tracks=("caller", "agent"),
        chunk_interval_ms=1000,
        nonce_prefix=prefix if prefix is not None else os.urandom(7),
    )
    fields.update(kw)
    return RecordingHeader(**fields)


def record(frames, *, dek: bytes = DEK, hdr: RecordingHeader | None = None) -> tuple[bytes, list]:
    sink = Collect()
    writer = EncryptingWriter(hdr or header(), dek, sink)
    for track, ts, payload in frames:
        writer.append(track, ts, payload)
    writer.close()
    return bytes(sink.data), sink.writes


def read_all(blob: bytes, rid: str = "rec_test", dek: bytes = DEK, expected=None):
    reader = RecordingReader(io.BytesIO(blob), dek, rid, expected_chunks=expected)
    return [(f.track, f.timestamp_ms, f.payload) for f in reader.frames()]


def five_second_call() -> list[tuple[int, int, bytes]]:
    return [(t, i * 20, bytes([(i + t) % 256]) * 160) for i in range(250) for t in (0, 1)]


def chunk_spans(blob: bytes) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each chunk, from the length prefixes alone."""
    pos = PREAMBLE.size + PREAMBLE.unpack_from(blob)[2]
    spans = []
    while pos < len(blob):
        (n,) = CHUNK_LENGTH.unpack_from(blob, pos)
        spans.append((pos, pos + CHUNK_LENGTH.size + n))
        pos += CHUNK_LENGTH.size + n
    return spans


# -- known answer ---------------------------------------------------------------------------------
def kat_header() -> RecordingHeader:
    h = KAT["header"]
    return RecordingHeader(
        recording_id=h["recording_id"],
        tenant_id=h["tenant_id"],
        codec=h["codec"],
        sample_rate=h["sample_rate"],
        tracks=tuple(h["tracks"]),
        chunk_interval_ms=h["chunk_interval_ms"],
        nonce_prefix=bytes.fromhex(h["nonce_prefix"]),
    )


def test_writer_reproduces_the_committed_known_answer_vector():
    frames = [(t, ts, bytes.fromhex(p)) for t, ts, p in KAT["frames"]]
    blob, _ = record(frames, dek=bytes.fromhex(KAT["data_key"]), hdr=kat_header())
    assert blob == (VECTORS / "kat-v1.bin").read_bytes()


def test_known_answer_vector_decrypts_to_its_inputs():
    blob = (VECTORS / "kat-v1.bin").read_bytes()
    dek = bytes.fromhex(KAT["data_key"])
    expected = [(t, ts, bytes.fromhex(p)) for t, ts, p in KAT["frames"]]
    assert read_all(blob, KAT["header"]["recording_id"], dek) == expected
    header_fields, frames = independent_decrypt(blob, dek)
    assert frames == expected
    assert header_fields["nonce_prefix"] == KAT["header"]["nonce_prefix"]


def test_known_answer_vector_is_printed_in_the_spec():
    spec = (Path(__file__).parent.parent / "docs" / "recording-format.md").read_text()
    hex_in_spec = "".join(
        line.strip() for line in spec.split("```kat-v1.bin\n")[1].split("```")[0].splitlines()
    )
    assert hex_in_spec == (VECTORS / "kat-v1.bin").read_bytes().hex()


# -- round trips ----------------------------------------------------------------------------------
frame_lists = st.lists(
    st.tuples(st.integers(0, 1), st.integers(0, 0xFFFFFFFF), st.binary(min_size=0, max_size=400)),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(frames=frame_lists, interval=st.integers(1, 3000))
def test_any_frame_sequence_round_trips(frames, interval):
    hdr = header(chunk_interval_ms=interval)
    blob, _ = record(frames, hdr=hdr)
    assert read_all(blob) == frames
    assert independent_decrypt(blob, DEK)[1] == frames


@settings(max_examples=50, deadline=None)
@given(frames=frame_lists)
def test_no_chunk_exceeds_its_limit_and_chunks_follow_media_time(frames):
    hdr = header(chunk_interval_ms=1000)
    sink = Collect()
    writer = EncryptingWriter(hdr, DEK, sink, max_chunk_bytes=70_000)
    for f in frames:
        writer.append(*f)
    writer.close()
    reader = RecordingReader(io.BytesIO(bytes(sink.data)), DEK, "rec_test")
    chunks = list(reader.chunks())
    assert chunks[-1].final and not any(c.final for c in chunks[:-1])
    for c in chunks:
        size = sum(7 + len(f.payload) for f in c.frames)
        assert size <= 70_000


def test_a_chunk_is_sealed_per_interval_of_media_time():
    _, writes = record(five_second_call())
    # chunks for 0-1 s (with the header in front), 1-2, 2-3, 3-4 and the final 4-5 s
    assert len(writes) == 5
    assert writes[0].startswith(b"IVRREC") and not writes[1].startswith(b"IVRREC")


def test_flush_seals_pending_audio_and_close_marks_the_end():
    sink = Collect()
    writer = EncryptingWriter(header(), DEK, sink)
    writer.append(0, 0, b"\x01" * 160)
    writer.flush()
    writer.flush()  # nothing pending: no empty chunk
    assert len(sink.writes) == 1
    writer.close()
    writer.close()
    assert len(sink.writes) == 2
    with pytest.raises(WriterClosed):
        writer.append(0, 20, b"\x01")
    assert read_all(bytes(sink.data)) == [(0, 0, b"\x01" * 160)]


@pytest.mark.parametrize(
    ("track", "ts", "payload"),
    [(2, 0, b""), (-1, 0, b""), (0, -1, b""), (0, 2**32, b""), (0, 0, b"x" * 65536)],
)
def test_writer_rejects_frames_the_format_cannot_hold(track, ts, payload):
    writer = EncryptingWriter(header(), DEK, Collect())
    with pytest.raises(ValueError):
        writer.append(track, ts, payload)


@pytest.mark.parametrize(
    "change",
    [
        {"codec": "mp3"},
        {"sample_rate": 4000},
        {"tracks": ()},
        {"tracks": ("caller", "caller")},
        {"nonce_prefix": b"short"},
        {"tenant_id": "a b"},
        {"recording_id": "../../etc"},
        {"chunk_interval_ms": 0},
    ],
)
def test_header_rejects_bad_fields(change):
    with pytest.raises(FormatError):
        header(**change)


# -- tampering ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sealed() -> bytes:
    return record(five_second_call())[0]


def expect_failure(blob: bytes, *, chunk: int | None, rid: str = "rec_test", expected=None):
    with pytest.raises(FormatError) as err:
        read_all(blob, rid, expected=expected)
    assert err.value.recording_id == rid
    assert rid in str(err.value)
    if chunk is not None:
        assert err.value.chunk == chunk
        assert f"chunk {chunk}" in str(err.value)
    return err.value


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_every_flipped_bit_is_detected(sealed, data):
    position = data.draw(st.integers(0, len(sealed) - 1))
    bit = data.draw(st.integers(0, 7))
    damaged = bytearray(sealed)
    damaged[position] ^= 1 << bit
    with pytest.raises(FormatError) as err:
        read_all(bytes(damaged))
    assert "rec_test" in str(err.value)
    header_end = PREAMBLE.size + PREAMBLE.unpack_from(sealed)[2]
    if position >= header_end:
        spans = chunk_spans(sealed)
        hit = next(i for i, (a, b) in enumerate(spans) if a <= position < b)
        # A damaged length prefix may be reported at that chunk or as a truncation after it.
        assert err.value.chunk is not None and err.value.chunk >= hit


def test_dropped_chunk_is_detected(sealed):
    spans = chunk_spans(sealed)
    a, b = spans[2]
    expect_failure(sealed[:a] + sealed[b:], chunk=2)


def test_duplicated_chunk_is_detected(sealed):
    a, b = chunk_spans(sealed)[1]
    expect_failure(sealed[:b] + sealed[a:b] + sealed[b:], chunk=2)


def test_reordered_chunks_are_detected(sealed):
    spans = chunk_spans(sealed)
    (a1, b1), (a2, b2) = spans[1], spans[2]
    swapped = sealed[:a1] + sealed[a2:b2] + sealed[a1:b1] + sealed[b2:]
    expect_failure(swapped, chunk=1)


def test_truncation_at_a_chunk_boundary_is_detected(sealed):
    a, _ = chunk_spans(sealed)[-1]
    err = expect_failure(sealed[:a], chunk=4)
    assert "final chunk" in err.reason


def test_truncation_inside_a_chunk_is_detected(sealed):
    a, b = chunk_spans(sealed)[3]
    expect_failure(sealed[: (a + b) // 2], chunk=3)


def test_data_after_the_final_chunk_is_detected(sealed):
    err = expect_failure(sealed + b"\x00", chunk=5)
    assert "after the final chunk" in err.reason


def test_final_chunk_cannot_be_replaced_by_a_non_final_one(sealed):
    # Cut the final chunk and append one that a writer sealed as non-final at the same index.
    sink = Collect()
    hdr = header(
        prefix=bytes.fromhex(json.loads(sealed[12 : chunk_spans(sealed)[0][0]])["nonce_prefix"])
    )
    writer = EncryptingWriter(hdr, DEK, sink)
    for f in five_second_call():
        writer.append(*f)
    writer.flush()
    non_final = sink.writes[-1]
    a, _ = chunk_spans(sealed)[-1]
    expect_failure(sealed[:a] + non_final, chunk=5)


def test_header_swapped_between_recordings_is_detected():
    first, _ = record(five_second_call(), hdr=header("rec_first"))
    second, _ = record(five_second_call(), hdr=header("rec_second"))
    h1 = chunk_spans(first)[0][0]
    h2 = chunk_spans(second)[0][0]
    # Second recording's chunks under the first's header, read as the second recording.
    err = expect_failure(first[:h1] + second[h2:], chunk=None, rid="rec_second")
    assert "rec_first" in str(err) and "swapped" in str(err)
    # Read as the first recording (whose id the header claims), the chunks do not authenticate.
    expect_failure(first[:h1] + second[h2:], chunk=0, rid="rec_first")


def test_altered_header_field_fails_authentication(sealed):
    damaged = sealed.replace(b'"sample_rate":8000', b'"sample_rate":8001')
    assert damaged != sealed
    expect_failure(damaged, chunk=0)


def test_wrong_data_key_fails_at_the_first_chunk(sealed):
    with pytest.raises(FormatError) as err:
        read_all(sealed, dek=os.urandom(32))
    assert err.value.chunk == 0


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b"NOTREC" + b[6:],
        lambda b: b[:6] + struct.pack(">H", 2) + b[8:],
        lambda b: b[:8] + struct.pack(">I", 1 << 30) + b[12:],
        lambda b: b[:5],
    ],
    ids=["magic", "version", "header-length", "too-short"],
)
def test_malformed_preamble_is_rejected(sealed, mangle):
    with pytest.raises(FormatError):
        read_all(mangle(sealed))


def test_incomplete_blob_reads_exactly_the_chunks_the_catalog_recorded(sealed):
    a, _ = chunk_spans(sealed)[-1]
    cut = sealed[:a]
    assert len(read_all(cut, expected=4)) == 4 * 100
    expect_failure(cut, chunk=4, expected=5)  # catalog says more: truncated
    b = chunk_spans(sealed)[2][0]
    expect_failure(sealed[:b], chunk=2, expected=4)


@settings(max_examples=100, deadline=None)
@given(
    frames=frame_lists,
    uniform=st.integers(1, 200),
    make_uniform=st.booleans(),
)
def test_batches_match_frames(frames, uniform, make_uniform):
    if make_uniform:  # exercise the fixed-size fast path as well as the general one
        frames = [(t, ts, (p * uniform)[:uniform] or b"\x00" * uniform) for t, ts, p in frames]
    blob, _ = record(frames)
    reader = RecordingReader(io.BytesIO(blob), DEK, "rec_test")
    got = []
    for b in reader.batches():
        offset = 0
        for track, ts, length in zip(b.tracks, b.timestamps_ms, b.lengths, strict=True):
            got.append((int(track), int(ts), b.payload[offset : offset + length].tobytes()))
            offset += length
    assert got == frames


# -- append_run: a run of evenly spaced frames in one call ----------------------------------------
class FailingAfter(Collect):
    """A sink that takes ``good`` writes, then fails every one (a full disk)."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good

    def write(self, data: bytes) -> None:
        if len(self.writes) >= self.good:
            raise OSError("disk full")
        super().write(data)


def append_each(writer: EncryptingWriter, run: tuple[int, int, int, list[bytes]]) -> list[str]:
    """The run through ``append`` one frame at a time: what each frame raised ("" if nothing)."""
    track, ts, step, payloads = run
    outcomes = []
    for i, payload in enumerate(payloads):
        try:
            writer.append(track, ts + i * step, payload)
            outcomes.append("")
        except (ValueError, OSError, WriterClosed) as exc:
            outcomes.append(type(exc).__name__)
    return outcomes


def append_in_runs(writer: EncryptingWriter, run: tuple[int, int, int, list[bytes]]) -> list[str]:
    """The same through ``append_run``, with ``append`` for each frame it leaves, as its
    docstring says a caller must."""
    track, ts, step, payloads = run
    outcomes: list[str] = []
    i = 0
    while i < len(payloads):
        taken = writer.append_run(track, ts + i * step, step, payloads, i)
        outcomes += [""] * taken
        i += taken
        if i < len(payloads):
            outcomes += append_each(writer, (track, ts + i * step, step, [payloads[i]]))
            i += 1
    return outcomes


frame_runs = st.lists(
    st.tuples(
        st.integers(-1, 2),  # the track: -1 and 2 are refused
        st.integers(0, 0xFFFFFFFF),
        st.sampled_from([0, 1, 20, 20, 20, 999, 2**31]),  # step: some runs leave the format
        st.lists(st.sampled_from([b"", b"\x01" * 160, b"\x02" * 1000, b"x" * 65536]), max_size=14),
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(
    runs=frame_runs,
    interval=st.integers(1, 3000),
    chunk=st.sampled_from([66_000, 70_000, 256 * 1024]),
    good=st.integers(0, 40),
    closes=st.integers(0, 30),
)
def test_append_run_writes_what_append_writes_byte_for_byte(runs, interval, chunk, good, closes):
    # Two writers with the same key and header, one fed frame by frame, the other run by run:
    # the same bytes to the sink, the same frames refused, the same failure when the disk fills
    # (after ``good`` writes) and after a close (before run ``closes``).
    hdr = header(chunk_interval_ms=interval, prefix=bytes(7))
    each_sink, run_sink = FailingAfter(good), FailingAfter(good)
    each = EncryptingWriter(hdr, DEK, each_sink, max_chunk_bytes=chunk)
    in_runs = EncryptingWriter(hdr, DEK, run_sink, max_chunk_bytes=chunk)
    for n, run in enumerate(runs):
        if n == closes:
            for writer in (each, in_runs):
                with contextlib.suppress(OSError):
                    writer.close()
        assert append_in_runs(in_runs, run) == append_each(each, run)
        assert run_sink.writes == each_sink.writes
        assert (in_runs.buffered, in_runs.closed) == (each.buffered, each.closed)
        assert in_runs.frames_dropped == each.frames_dropped
    for writer in (each, in_runs):
        with contextlib.suppress(OSError):
            writer.close()
    assert run_sink.writes == each_sink.writes
    assert in_runs.last_frame == each.last_frame


def test_append_run_takes_a_run_within_one_chunk_and_leaves_the_chunks_edges_to_append():
    writer = EncryptingWriter(header(chunk_interval_ms=100), DEK, Collect())
    frames = [bytes([n]) * 160 for n in range(8)]
    assert writer.append_run(0, 0, 20, frames) == 0  # no chunk yet: append starts one
    writer.append(0, 0, frames[0])
    assert writer.append_run(0, 20, 20, frames, 1) == 4  # 20..80 ms; 100 ms seals
    assert writer.append_run(2, 100, 20, frames, 5) == 0  # no such track: append says why
    with pytest.raises(ValueError, match="track 2"):
        writer.append(2, 100, frames[5])


def test_a_refused_frame_leaves_the_chunk_as_it_was():
    # The seal reads the chunk's last frame (the recording's end) from where it was appended:
    # a frame refused after it once moved that place to the buffer's end, and the seal failed.
    sink = Collect()
    writer = EncryptingWriter(header(), DEK, sink)
    writer.append(0, 0, b"\x01" * 160)
    with pytest.raises(ValueError, match="out of range"):
        writer.append(0, 20, b"x" * 65536)
    writer.close()
    assert writer.last_frame == (0, 160)
    assert read_all(bytes(sink.data)) == [(0, 0, b"\x01" * 160)]


def test_a_chunk_that_cannot_be_written_says_how_many_frames_it_held():
    sink = FailingAfter(1)  # the header and the first chunk, then a full disk
    writer = EncryptingWriter(header(chunk_interval_ms=100), DEK, sink)
    for i in range(5):  # 0 to 80 ms: the first chunk
        writer.append(i % 2, i * 20, b"\x01" * 160)
    assert writer.frames_dropped == 0
    for i in range(5, 12):  # 100 ms seals the first chunk; 200 ms fails to write the second
        with contextlib.suppress(OSError):
            writer.append(i % 2, i * 20, b"\x02" * (i * 10))
    assert writer.closed and writer.frames_dropped == 5  # 100 to 180 ms
    assert read_all_until_failure(bytes(sink.data)) == [
        (i % 2, i * 20, b"\x01" * 160) for i in range(5)
    ]


def read_all_until_failure(blob: bytes) -> list:
    reader = RecordingReader(io.BytesIO(blob), DEK, "rec_test")
    frames = []
    with contextlib.suppress(FormatError):
        for f in reader.frames():
            frames.append((f.track, f.timestamp_ms, f.payload))
    return frames
