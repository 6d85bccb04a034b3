"""Verifying reader for recording blobs: every rejection rule of docs/recording-format.md."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.blobs import ByteSource
from storage.format import (
    CHUNK_LENGTH,
    FRAME_HEAD,
    MAX_CHUNK_PLAINTEXT,
    MAX_HEADER_JSON,
    PREAMBLE,
    TAG_LEN,
    FormatError,
    Frame,
    RecordingHeader,
    open_chunk,
    parse_frames,
)


@dataclass(frozen=True, slots=True)
class FrameBatch:
    """One chunk's frames as arrays: the shape bulk consumers (export) want, built without
    a Python object per frame."""

    tracks: npt.NDArray[np.uint8]
    timestamps_ms: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int64]
    payload: npt.NDArray[np.uint8]  # the payloads, concatenated in frame order


def parse_batch(plaintext: bytes, n_tracks: int, recording_id: str, chunk: int) -> FrameBatch:
    # Fast path: every record has the same payload length (the usual 20 ms frames), so the
    # chunk is an array of fixed-size records that numpy can view in place.
    if len(plaintext) >= FRAME_HEAD.size:
        size = int.from_bytes(plaintext[5:7], "big")
        if size and len(plaintext) % (FRAME_HEAD.size + size) == 0:
            records = np.frombuffer(
                plaintext,
                dtype=np.dtype(
                    [("track", "u1"), ("ts", ">u4"), ("len", ">u2"), ("payload", "u1", (size,))]
                ),
            )
            if (records["len"] == size).all():
                tracks = records["track"]
                if tracks.max() >= n_tracks:
                    raise FormatError(recording_id, chunk, "frame names a track that is not there")
                return FrameBatch(
                    tracks,
                    records["ts"].astype(np.int64),
                    np.full(len(records), size, dtype=np.int64),
                    records["payload"].reshape(-1),
                )
    frames = list(parse_frames(plaintext, n_tracks, recording_id, chunk))
    return FrameBatch(
        np.fromiter((f.track for f in frames), np.uint8, len(frames)),
        np.fromiter((f.timestamp_ms for f in frames), np.int64, len(frames)),
        np.fromiter((len(f.payload) for f in frames), np.int64, len(frames)),
        np.frombuffer(b"".join(f.payload for f in frames), dtype=np.uint8),
    )


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    final: bool
    frames: tuple[Frame, ...]
    end_offset: int  # byte offset just past this chunk in the blob


def read_header(stream: ByteSource, recording_id: str | None) -> tuple[RecordingHeader, bytes]:
    """The parsed header and its exact bytes (the associated data of every chunk)."""
    preamble = stream.read(PREAMBLE.size)
    if len(preamble) < PREAMBLE.size:
        raise FormatError(recording_id, None, "truncated header")
    length = PREAMBLE.unpack(preamble)[2]
    if length > MAX_HEADER_JSON:
        raise FormatError(recording_id, None, f"header of {length} bytes exceeds the limit")
    raw = preamble + stream.read(length)
    header = RecordingHeader.decode(raw, recording_id)
    if recording_id is not None and header.recording_id != recording_id:
        raise FormatError(
            recording_id,
            None,
            f"header belongs to recording {header.recording_id} (swapped header)",
        )
    return header, raw


class RecordingReader:
    """Reads one blob with its data key.

    ``expected_chunks`` is for recordings that never got a final chunk (a crash, a full disk):
    the catalog then says how many chunks were verified when the recording was recovered, and
    the blob must hold exactly that many. Otherwise the blob must end with its final chunk.
    """

    def __init__(
        self,
        stream: ByteSource,
        dek: bytes,
        recording_id: str | None,
        *,
        expected_chunks: int | None = None,
    ) -> None:
        self._stream = stream
        self._aead = AESGCM(dek)
        self._expected = expected_chunks
        self.header, self._aad = read_header(stream, recording_id)
        self.recording_id = self.header.recording_id
        self._offset = len(self._aad)

    def chunks(self, *, stop_at_damage: bool = False) -> Iterator[Chunk]:
        """Verified chunks in order. ``stop_at_damage`` ends quietly at the first bad or missing
        chunk instead of raising: crash recovery uses it to find the last sealed chunk."""
        n_tracks = len(self.header.tracks)
        for index, final, plaintext, end in self._verified(stop_at_damage):
            frames = tuple(parse_frames(plaintext, n_tracks, self.recording_id, index))
            yield Chunk(index, final, frames, end)

    def frames(self) -> Iterator[Frame]:
        for chunk in self.chunks():
            yield from chunk.frames

    def batches(self) -> Iterator[FrameBatch]:
        """Every chunk's frames as arrays, verified exactly as ``chunks`` does."""
        n_tracks = len(self.header.tracks)
        for index, _final, plaintext, _end in self._verified(False):
            yield parse_batch(plaintext, n_tracks, self.recording_id, index)

    def _verified(self, stop_at_damage: bool) -> Iterator[tuple[int, bool, bytes, int]]:
        rid = self.recording_id
        index = 0
        while True:
            try:
                chunk = self._next_chunk(index)
            except FormatError:
                if stop_at_damage:
                    return
                raise
            if chunk is None:
                if stop_at_damage:
                    return
                if self._expected is None:
                    raise FormatError(rid, index, "blob ends without a final chunk (truncated)")
                if index != self._expected:
                    raise FormatError(
                        rid,
                        index,
                        f"blob has {index} chunks, the catalog recorded {self._expected}",
                    )
                return
            plaintext, final, end = chunk
            self._offset = end
            yield index, final, plaintext, end
            if final:
                if self._stream.read(1):
                    raise FormatError(rid, index + 1, "data after the final chunk")
                if self._expected is not None and index + 1 != self._expected:
                    raise FormatError(
                        rid, index, f"blob has {index + 1} chunks, catalog says {self._expected}"
                    )
                return
            index += 1

    def _next_chunk(self, index: int) -> tuple[bytes, bool, int] | None:
        rid = self.recording_id
        raw_len = self._stream.read(CHUNK_LENGTH.size)
        if not raw_len:
            return None
        if len(raw_len) < CHUNK_LENGTH.size:
            raise FormatError(rid, index, "truncated chunk length")
        (length,) = CHUNK_LENGTH.unpack(raw_len)
        if not TAG_LEN <= length <= MAX_CHUNK_PLAINTEXT + TAG_LEN:
            raise FormatError(rid, index, f"impossible chunk length {length}")
        sealed = self._stream.read(length)
        if len(sealed) < length:
            raise FormatError(rid, index, "truncated chunk")
        try:
            plaintext, final = open_chunk(
                self._aead, self._aad, self.header.nonce_prefix, index, sealed
            )
        except InvalidTag:
            raise FormatError(
                rid,
                index,
                "authentication failed (altered, dropped, duplicated, reordered or foreign chunk)",
            ) from None
        return plaintext, final, self._offset + CHUNK_LENGTH.size + length
