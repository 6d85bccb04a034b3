"""Regenerate the known-answer vector of the recording format (docs/recording-format.md).

Run only when the format version changes: ``python tests/vectors/make_kat.py``. The test suite
checks the writer still produces these exact bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from storage.format import RecordingHeader
from storage.writer import EncryptingWriter

HERE = Path(__file__).parent
INPUTS = json.loads((HERE / "kat-v1.json").read_text())


class Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


def build() -> bytes:
    h = INPUTS["header"]
    header = RecordingHeader(
        recording_id=h["recording_id"],
        tenant_id=h["tenant_id"],
        codec=h["codec"],
        sample_rate=h["sample_rate"],
        tracks=tuple(h["tracks"]),
        chunk_interval_ms=h["chunk_interval_ms"],
        nonce_prefix=bytes.fromhex(h["nonce_prefix"]),
    )
    sink = Collect()
    writer = EncryptingWriter(header, bytes.fromhex(INPUTS["data_key"]), sink)
    for track, ts, payload in INPUTS["frames"]:
        writer.append(track, ts, bytes.fromhex(payload))
    writer.close()
    return bytes(sink.data)


if __name__ == "__main__":
    (HERE / "kat-v1.bin").write_bytes(build())
    print(build().hex())
