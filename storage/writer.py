"""EncryptingWriter: frames in, sealed chunks out, while the call is still running.

The writer never holds more than one chunk of plaintext and never hands plaintext to its sink.
It seals a chunk when the media clock (frame timestamps) has moved a chunk interval past the
chunk's first frame, when the chunk reaches ``max_chunk_bytes``, on ``flush()`` and, with the
final flag, on ``close()``. Using media time rather than wall time keeps the output a pure
function of the input (and so testable against a fixed vector) and bounds what a crash can lose
to one interval of audio.
"""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.format import (
    FRAME_HEAD,
    KEY_LEN,
    MAX_CHUNK_PLAINTEXT,
    MAX_CHUNKS,
    MAX_PAYLOAD,
    MAX_TIMESTAMP_MS,
    RecordingHeader,
    seal_chunk,
)


class ChunkSink(Protocol):
    """Where sealed bytes go: the header once, then one ``write`` per chunk."""

    def write(self, data: bytes) -> None: ...


class WriterClosed(RuntimeError):
    pass


class EncryptingWriter:
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
        self._buf = bytearray()
        self._seal_at = 0
        self._pack = FRAME_HEAD.pack
        self.chunks_sealed = 0
        self.frames = 0
        self.last_timestamp_ms: int | None = None
        self.closed = False
        sink.write(self._aad)

    def append(self, track: int, timestamp_ms: int, payload: bytes) -> None:
        """Add one frame. Cheap unless it completes a chunk, which is then sealed and written."""
        if self.closed:
            raise WriterClosed(f"recording {self.header.recording_id} is closed")
        if not 0 <= track < self._n_tracks:
            raise ValueError(f"track {track} out of range 0..{self._n_tracks - 1}")
        if not 0 <= timestamp_ms <= MAX_TIMESTAMP_MS:
            raise ValueError(f"timestamp {timestamp_ms} ms out of range")
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        buf = self._buf
        if buf and (timestamp_ms >= self._seal_at or len(buf) > self._soft_limit):
            self._seal(final=False)
        if not buf:
            self._seal_at = timestamp_ms + self._interval
        buf += self._pack(track, timestamp_ms, len(payload))
        buf += payload
        self.frames += 1
        if self.last_timestamp_ms is None or timestamp_ms > self.last_timestamp_ms:
            self.last_timestamp_ms = timestamp_ms

    def flush(self) -> None:
        """Seal what is buffered now (e.g. the stream went quiet); no-op when nothing is."""
        if self.closed:
            raise WriterClosed(f"recording {self.header.recording_id} is closed")
        if self._buf:
            self._seal(final=False)

    def close(self) -> None:
        """Seal the final chunk (possibly empty): the marker that the recording ended cleanly."""
        if self.closed:
            return
        self._seal(final=True)
        self.closed = True

    def abort(self) -> None:
        """Stop without a final chunk and forget the buffered plaintext (recording discarded)."""
        self._buf[:] = bytes(len(self._buf))
        self._buf.clear()
        self.closed = True

    def _seal(self, final: bool) -> None:
        if self.chunks_sealed >= MAX_CHUNKS - 1 and not final:
            raise OverflowError("chunk counter exhausted")
        data = seal_chunk(
            self._aead, self._aad, self._prefix, self.chunks_sealed, final, bytes(self._buf)
        )
        self._buf.clear()
        self.chunks_sealed += 1
        self._sink.write(data)
