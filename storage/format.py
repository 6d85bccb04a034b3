"""The encrypted recording container, version 1 (specified in docs/recording-format.md).

Theory of operation: a blob is a plaintext header followed by chunks sealed with AES-256-GCM in
the STREAM construction. The header is bound to every chunk as associated data; each chunk's nonce
is ``nonce_prefix ‖ counter ‖ last-flag``, so a chunk that is dropped, duplicated, reordered, moved
to another recording or cut off fails authentication at a known index. Chunk plaintext is a run of
frame records ``track | timestamp_ms | length | payload``, which keeps two tracks and gaps.

This module is pure: bytes in, bytes or values out. Files and keys live elsewhere.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"IVRREC"
VERSION = 1
PREAMBLE = struct.Struct(">6sHI")  # magic, version, header JSON length
MAX_HEADER_JSON = 16 * 1024
NONCE_PREFIX_LEN = 7
TAG_LEN = 16
KEY_LEN = 32
CHUNK_LENGTH = struct.Struct(">I")
MAX_CHUNK_PLAINTEXT = 1 << 20
MAX_CHUNKS = 1 << 32
FRAME_HEAD = struct.Struct(">BIH")  # track index, timestamp in ms, payload length
MAX_TIMESTAMP_MS = 0xFFFFFFFF
MAX_PAYLOAD = 0xFFFF
MAX_TRACKS = 255

CODECS = ("pcmu", "pcma", "l16")
_HEADER_FIELDS = {
    "recording_id": str,
    "tenant_id": str,
    "codec": str,
    "sample_rate": int,
    "tracks": list,
    "chunk_interval_ms": int,
    "nonce_prefix": str,
}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class FormatError(ValueError):
    """A blob is malformed or fails verification. Names the recording and, if known, the chunk."""

    def __init__(self, recording_id: str | None, chunk: int | None, reason: str) -> None:
        self.recording_id = recording_id
        self.chunk = chunk
        self.reason = reason
        where = f"recording {recording_id or '<unknown>'}"
        if chunk is not None:
            where += f", chunk {chunk}"
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingHeader:
    """What a blob says about itself in clear. Holds no personal data by construction."""

    recording_id: str
    tenant_id: str
    codec: str
    sample_rate: int
    tracks: tuple[str, ...]
    chunk_interval_ms: int
    nonce_prefix: bytes

    def __post_init__(self) -> None:
        rid = self.recording_id if isinstance(self.recording_id, str) else None

        def bad(reason: str) -> FormatError:
            return FormatError(rid, None, f"bad header: {reason}")

        for name in ("recording_id", "tenant_id"):
            if not _ID.match(getattr(self, name)):
                raise bad(f"{name} must match {_ID.pattern}")
        if self.codec not in CODECS:
            raise bad(f"codec {self.codec!r} is not one of {', '.join(CODECS)}")
        if not 8000 <= self.sample_rate <= 48000:
            raise bad(f"sample_rate {self.sample_rate} outside 8000..48000")
        if not 1 <= len(self.tracks) <= MAX_TRACKS:
            raise bad(f"needs 1..{MAX_TRACKS} tracks, got {len(self.tracks)}")
        if len(set(self.tracks)) != len(self.tracks) or not all(
            isinstance(t, str) and _ID.match(t) for t in self.tracks
        ):
            raise bad("track names must be distinct identifiers")
        if not 1 <= self.chunk_interval_ms <= 60_000:
            raise bad(f"chunk_interval_ms {self.chunk_interval_ms} outside 1..60000")
        if len(self.nonce_prefix) != NONCE_PREFIX_LEN:
            raise bad(f"nonce_prefix must be {NONCE_PREFIX_LEN} bytes")

    def encode(self) -> bytes:
        """The exact header bytes (preamble + canonical JSON): every chunk's associated data."""
        body = json.dumps(
            {
                "recording_id": self.recording_id,
                "tenant_id": self.tenant_id,
                "codec": self.codec,
                "sample_rate": self.sample_rate,
                "tracks": list(self.tracks),
                "chunk_interval_ms": self.chunk_interval_ms,
                "nonce_prefix": self.nonce_prefix.hex(),
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
        ).encode("ascii")
        return PREAMBLE.pack(MAGIC, VERSION, len(body)) + body

    @classmethod
    def decode(cls, raw: bytes, recording_id: str | None = None) -> RecordingHeader:
        """Parse header bytes exactly as produced by ``encode`` (preamble included)."""
        rid = recording_id
        if len(raw) < PREAMBLE.size:
            raise FormatError(rid, None, "truncated header")
        magic, version, length = PREAMBLE.unpack_from(raw)
        if magic != MAGIC:
            raise FormatError(rid, None, "not a recording blob (bad magic)")
        if version != VERSION:
            raise FormatError(rid, None, f"unsupported format version {version}")
        if len(raw) != PREAMBLE.size + length:
            raise FormatError(rid, None, "header length does not match its preamble")
        try:
            fields = json.loads(raw[PREAMBLE.size :].decode("ascii"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(rid, None, f"header is not ASCII JSON ({exc})") from None
        if not isinstance(fields, dict) or set(fields) != set(_HEADER_FIELDS):
            raise FormatError(
                rid, None, f"header must have exactly the fields {sorted(_HEADER_FIELDS)}"
            )
        for name, kind in _HEADER_FIELDS.items():
            value = fields[name]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise FormatError(rid, None, f"header field {name} must be {kind.__name__}")
        try:
            prefix = bytes.fromhex(fields["nonce_prefix"])
        except ValueError:
            raise FormatError(rid, None, "header nonce_prefix is not hex") from None
        try:
            return cls(
                recording_id=fields["recording_id"],
                tenant_id=fields["tenant_id"],
                codec=fields["codec"],
                sample_rate=fields["sample_rate"],
                tracks=tuple(fields["tracks"]),
                chunk_interval_ms=fields["chunk_interval_ms"],
                nonce_prefix=prefix,
            )
        except FormatError as exc:
            # Name the recording the reader asked for, not what a damaged header claims.
            raise FormatError(rid or exc.recording_id, None, exc.reason) from None


@dataclass(frozen=True, slots=True)
class Frame:
    """One piece of audio on one track, at a time relative to the recording's start."""

    track: int
    timestamp_ms: int
    payload: bytes


def chunk_nonce(prefix: bytes, counter: int, final: bool) -> bytes:
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


def seal_chunk(
    aead: AESGCM,
    header_bytes: bytes,
    prefix: bytes,
    counter: int,
    final: bool,
    plaintext: bytes | memoryview,
) -> bytes:
    """One chunk as stored: big-endian length of the sealed part, then ciphertext ‖ tag."""
    sealed = aead.encrypt(chunk_nonce(prefix, counter, final), plaintext, header_bytes)
    return CHUNK_LENGTH.pack(len(sealed)) + sealed


def open_chunk(
    aead: AESGCM, header_bytes: bytes, prefix: bytes, counter: int, sealed: bytes
) -> tuple[bytes, bool]:
    """Authenticate and decrypt; returns (plaintext, is_final). Raises InvalidTag."""
    try:
        return aead.decrypt(chunk_nonce(prefix, counter, False), sealed, header_bytes), False
    except InvalidTag:
        return aead.decrypt(chunk_nonce(prefix, counter, True), sealed, header_bytes), True


def pack_frame(track: int, timestamp_ms: int, payload: bytes) -> bytes:
    return FRAME_HEAD.pack(track, timestamp_ms, len(payload)) + payload


def parse_frames(plaintext: bytes, n_tracks: int, recording_id: str, chunk: int) -> Iterator[Frame]:
    """Frame records of one authenticated chunk; a malformed record is a FormatError."""
    view = memoryview(plaintext)
    offset, end, head = 0, len(plaintext), FRAME_HEAD.size
    unpack = FRAME_HEAD.unpack_from
    while offset < end:
        if end - offset < head:
            raise FormatError(recording_id, chunk, f"truncated frame record at byte {offset}")
        track, ts, length = unpack(view, offset)
        offset += head
        if track >= n_tracks:
            raise FormatError(recording_id, chunk, f"frame names track {track} of {n_tracks}")
        if end - offset < length:
            raise FormatError(recording_id, chunk, f"frame payload overruns chunk at byte {offset}")
        yield Frame(track, ts, bytes(view[offset : offset + length]))
        offset += length
