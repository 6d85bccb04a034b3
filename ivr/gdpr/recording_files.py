"""Recordings in and out of the vault as WAV files (``ivr recordings import`` / ``export``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ivr.policy import DEFAULT_RETENTION_DAYS, LawfulBasis
from media.g711 import ulaw_encode
from media.pcm import float_to_int16, frame, resample
from media.timeline import Timeline
from media.wavfile import load_audio, write_wav
from storage.catalog import RecordingRow
from storage.files import private_file
from storage.vault import Vault, VaultWriteError

STORAGE_CODEC = "pcmu"
STORAGE_RATE = 8000
FRAME_MS = 20
FRAME_BYTES = STORAGE_RATE * FRAME_MS // 1000
TRACKS_BY_CHANNELS = {1: ("caller",), 2: ("caller", "agent")}


@dataclass(frozen=True, slots=True)
class ExportResult:
    recording_id: str
    path: Path
    channels: int
    sample_rate: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class ImportAudio:
    """An audio file already converted to the storage codec, one frame list per track."""

    path: Path
    tracks: tuple[list[bytes], ...]


def load_for_import(path: Path) -> ImportAudio:
    """Read and convert before anything touches the vault, so a bad file changes nothing."""
    audio, rate = load_audio(path)
    channels = [
        ulaw_encode(float_to_int16(resample(audio[:, c], rate, STORAGE_RATE)))
        for c in range(audio.shape[1])
    ]
    return ImportAudio(path, tuple(frame(c, FRAME_BYTES) for c in channels))


def import_wav(
    vault: Vault,
    audio: ImportAudio,
    *,
    tenant: str,
    lawful_basis: LawfulBasis,
    purpose: str,
    actor: str,
    retention_days: int | None = None,
) -> RecordingRow:
    """Record converted audio through the same writer as a call.

    Stereo is taken as caller (left) and agent (right), mirroring what export produces.
    """
    framed = audio.tracks
    path = audio.path
    call_id = vault.open_call(tenant=tenant, platform="import")
    rec = vault.start_recording(
        tenant=tenant,
        call_id=call_id,
        lawful_basis=lawful_basis,
        purpose=purpose,
        tracks=TRACKS_BY_CHANNELS[len(framed)],
        retention_until=vault.clock()
        + timedelta(days=retention_days or DEFAULT_RETENTION_DAYS[LawfulBasis(lawful_basis)]),
    )
    try:
        for index, frames_at_t in enumerate(zip(*framed, strict=True)):
            for track, payload in enumerate(frames_at_t):
                rec.append(track, index * FRAME_MS, payload)
    except VaultWriteError:
        pass  # close() below keeps what reached the disk and says why the rest did not
    except BaseException:
        rec.discard(reason="import interrupted")
        raise
    row = rec.close()
    vault.audit(
        actor=actor,
        action="recording.imported",
        tenant=tenant,
        target=row.id,
        detail={"source": path.name, "status": row.status.value},
    )
    return row


def decode_recording(vault: Vault, row: RecordingRow, *, private_key: Any = None) -> np.ndarray:
    """A finished recording verified, decrypted and decoded: int16 (samples, tracks), caller
    first. Raises before returning anything if any chunk fails verification. ``private_key``
    opens a recording sealed to its tenant's public key."""
    if len(row.tracks) > 2:
        raise ValueError(f"recording {row.id} has {len(row.tracks)} tracks; WAV export takes 2")
    expected = (row.duration_ms or 0) * row.sample_rate // 1000
    timeline = Timeline(row.codec, row.sample_rate, len(row.tracks), expected_samples=expected)
    with vault.open_reader(row.id, private_key=private_key) as reader:
        for batch in reader.batches():
            timeline.add_arrays(batch.tracks, batch.timestamps_ms, batch.lengths, batch.payload)
    samples = timeline.samples()
    if "caller" in row.tracks and row.tracks.index("caller") != 0:
        samples = samples[:, ::-1]
    return np.ascontiguousarray(samples)


def export_wav(
    vault: Vault,
    recording_id: str,
    out: Path,
    *,
    actor: str,
    reason: str,
    private_key: Any = None,
) -> ExportResult:
    """Verify and decrypt a recording into a 16-bit WAV; two tracks become stereo.

    ``private_key`` opens a recording sealed to its tenant's public key (see Vault.data_key).

    Everything is verified before the first byte of the output exists, and the output appears
    under its name only once complete, so a tampered blob never yields a partial WAV.
    """
    row = vault.get(recording_id)
    samples = decode_recording(vault, row, private_key=private_key)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        with private_file(tmp) as fh:
            write_wav(
                fh,
                samples[:, 0] if samples.shape[1] == 1 else np.ascontiguousarray(samples),
                row.sample_rate,
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    vault.audit(
        actor=actor,
        action="recording.exported",
        tenant=row.tenant,
        target=recording_id,
        detail={"format": "wav", "reason": reason},
    )
    return ExportResult(
        recording_id,
        out,
        samples.shape[1],
        row.sample_rate,
        samples.shape[0] * 1000 // row.sample_rate,
    )
