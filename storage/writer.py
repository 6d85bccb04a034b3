"""EncryptingWriter: frames in, sealed chunks out, while the call is still running.

The writer never holds more than one chunk of plaintext and never hands plaintext to its sink.
It seals a chunk when the media clock (frame timestamps) has moved a chunk interval past the
chunk's first frame, when the chunk reaches ``max_chunk_bytes``, on ``flush()`` and, with the
final flag, on ``close()``. Using media time rather than wall time keeps the output a pure
function of the input (and so testable against a fixed vector) and bounds what a crash can lose
to one interval of audio.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.format import (
    FRAME_HEAD,
    KEY_LEN,
    MAX_CHUNK_PLAINTEXT,
    MAX_CHUNKS,
    MAX_PAYLOAD,
    RecordingHeader,
    seal_chunk,
)


class ChunkSink(Protocol):
    """Where sealed bytes go: one ``write`` per chunk, the first one preceded by the header."""

    def write(self, data: bytes) -> None: ...


class WriterClosed(Exception):  # not RuntimeError: mypyc (hotpath.py) compiles no subclass of it
    pass


class EncryptingWriter:
    __slots__ = (
        "_aad",
        "_aead",
        "_buf",
        "_interval",
        "_last_at",
        "_n_tracks",
        "_pack",
        "_prefix",
        "_seal_at",
        "_sink",
        "_soft_limit",
        "_unwritten_header",
        "chunks_sealed",
        "closed",
        "failure",
        "frames_dropped",
        "header",
        "last_frame",
    )

    def __init__(
        self,
        header: RecordingHeader,
        dek: bytes,
        sink: ChunkSink,
        *,
        max_chunk_bytes: int = 256 * 1024,
    ) -> None:
        if len(dek) != KEY_LEN:
            raise ValueError(f"data key must be {KEY_LEN} bytes")
        if not FRAME_HEAD.size + MAX_PAYLOAD <= max_chunk_bytes <= MAX_CHUNK_PLAINTEXT:
            raise ValueError("max_chunk_bytes must fit one maximal frame and at most 1 MiB")
        self.header = header
        self._aead = AESGCM(dek)
        self._aad = header.encode()
        self._prefix = header.nonce_prefix
        self._interval = header.chunk_interval_ms
        self._n_tracks = len(header.tracks)
        # Room for one more maximal frame, so a chunk never exceeds the plaintext limit.
        self._soft_limit = max_chunk_bytes - FRAME_HEAD.size - MAX_PAYLOAD
        self._sink = sink
        self._buf = bytearray()  # the chunk being built
        self._last_at = 0  # where the last frame appended starts in it
        self._seal_at = 0
        self._pack = FRAME_HEAD.pack
        self.chunks_sealed = 0
        # (timestamp_ms, payload length) of the last frame sealed: the recording's end.
        self.last_frame: tuple[int, int] | None = None
        self.closed = False
        # What the sink raised, once it failed: every later append raises it at once, so that
        # nothing is buffered or sealed for a disk that cannot take it.
        self.failure: Exception | None = None
        # The frames of the chunk whose write failed: taken by ``append``, never written.
        self.frames_dropped = 0
        # The header goes out with the first chunk: constructing a writer does no I/O, so a
        # full disk shows up where every other write failure does, when a chunk is sealed.
        self._unwritten_header = self._aad

    def append(self, track: int, timestamp_ms: int, payload: bytes) -> None:
        """Add one frame. Cheap unless it completes a chunk, which is then sealed and written.

        This is the per-frame hot path of every call, so its checks are folded into work it
        does anyway: ``struct.pack`` rejects a negative or oversized track, timestamp or length.
        """
        buf = self._buf
        if buf:
            if timestamp_ms >= self._seal_at or len(buf) > self._soft_limit:
                self._seal(final=False)
                self._seal_at = timestamp_ms + self._interval
        elif self.closed:
            raise self._closed_error()
        else:
            self._seal_at = timestamp_ms + self._interval
        if track >= self._n_tracks:
            raise ValueError(f"track {track} out of range 0..{self._n_tracks - 1}")
        try:
            head = self._pack(track, timestamp_ms, len(payload))
        except struct.error:
            raise ValueError(
                f"frame out of range: track {track}, timestamp {timestamp_ms} ms, "
                f"{len(payload)} bytes (at most {MAX_PAYLOAD})"
            ) from None
        # Only once the frame is taken: a refused one must not move where the seal looks for
        # the chunk's last frame.
        self._last_at = len(buf)
        buf += head
        buf += payload

    def append_run(
        self, track: int, timestamp_ms: int, step_ms: int, payloads: Sequence[bytes], start: int = 0
    ) -> int:
        """Add frames ``payloads[start:]``, the first at ``timestamp_ms`` and each next one
        ``step_ms`` later, as :meth:`append` would one by one, for as long as they go into the
        chunk being built: how many it took. It stops before a frame that would start a chunk
        (none is being built, or this one is due to be sealed) or that ``append`` would refuse;
        give that one to ``append``, which seals, starts the chunk or raises as it must, then
        the rest to this method again. So the output is the same byte for byte, and a run costs
        one call rather than one per frame (a call's audio arrives in runs: ``media.rtp``)."""
        buf = self._buf
        if not buf or not 0 <= track < self._n_tracks:
            return 0
        seal_at, limit, pack = self._seal_at, self._soft_limit, self._pack
        i, stop, last_at = start, len(payloads), -1
        while i < stop and timestamp_ms < seal_at and len(buf) <= limit:
            payload = payloads[i]
            try:
                head = pack(track, timestamp_ms, len(payload))
            except struct.error:
                break
            last_at = len(buf)
            buf += head
            buf += payload
            timestamp_ms += step_ms
            i += 1
        if last_at >= 0:
            self._last_at = last_at
        return i - start

    @property
    def buffered(self) -> int:
        """Plaintext bytes waiting for the next seal."""
        return len(self._buf)

    def _closed_error(self) -> Exception:
        if self.failure is not None:  # afresh: a re-raised exception's traceback grows
            return self.failure.with_traceback(None)
        return WriterClosed(f"recording {self.header.recording_id} is closed")

    def flush(self) -> None:
        """Seal what is buffered now (e.g. the stream went quiet); no-op when nothing is."""
        if self.closed:
            raise self._closed_error()
        if self._buf:
            self._seal(final=False)

    def close(self) -> None:
        """Seal the final chunk (possibly empty): the marker that the recording ended cleanly."""
        if self.closed:
            return
        self._seal(final=True)
        self.closed = True
        self._forget()

    def abort(self) -> None:
        """Stop without a final chunk and forget the buffered plaintext (recording discarded)."""
        self._forget()
        self.closed = True

    def _forget(self) -> None:
        """Overwrite the plaintext the buffer still holds, and let it go."""
        self._buf[:] = bytes(len(self._buf))
        self._buf.clear()

    def _seal(self, final: bool) -> None:
        if self.chunks_sealed >= MAX_CHUNKS - 1 and not final:
            raise OverflowError("chunk counter exhausted")
        buf = self._buf
        if buf:
            _, ts, length = FRAME_HEAD.unpack_from(buf, self._last_at)
            self.last_frame = ts, length
        with memoryview(buf) as plaintext:
            data = seal_chunk(
                self._aead, self._aad, self._prefix, self.chunks_sealed, final, plaintext
            )
        self.chunks_sealed += 1
        if self._unwritten_header:
            data = self._unwritten_header + data
            self._unwritten_header = b""
        try:
            self._sink.write(data)
        except Exception as exc:
            # The sink keeps what it took whole (a blob cuts back to its last chunk); this
            # writer takes nothing more, so a full disk costs no memory however long it lasts.
            # The chunk's frames were taken but never written: say how many, for the counts.
            self.frames_dropped = frame_count(buf)
            self.failure = exc
            self.closed = True
            self._forget()
            raise
        buf.clear()


def frame_count(chunk: bytes | bytearray) -> int:
    """How many frames a chunk's plaintext holds (each a ``FRAME_HEAD`` and its payload).
    Not ``storage.format.parse_frames``: that copies every payload out, and this runs on
    plaintext the writer is about to overwrite (``_forget``) so as not to leave it in memory."""
    count = offset = 0
    while offset < len(chunk):
        _, _, length = FRAME_HEAD.unpack_from(chunk, offset)
        offset += FRAME_HEAD.size + length
        count += 1
    return count
