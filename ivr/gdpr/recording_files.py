"""Recordings in and out of the vault as WAV files (``ivr recordings import`` / ``export``)."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ivr.config import normalise_number
from ivr.policy import DEFAULT_RETENTION_DAYS, LawfulBasis
from media.g711 import ulaw_encode
from media.pcm import float_to_int16, frame, resample
from media.timeline import SAMPLE_BYTES, Timeline
from media.wavfile import load_audio, write_wav
from storage.catalog import RecordingRow
from storage.files import private_file, utc_iso
from storage.vault import Vault, VaultWriteError

STORAGE_CODEC = "pcmu"
STORAGE_RATE = 8000
FRAME_MS = 20
FRAME_BYTES = STORAGE_RATE * FRAME_MS // 1000
TRACKS_BY_CHANNELS = {1: ("caller",), 2: ("caller", "agent")}
# The lawful bases under which an imported recording must come with its evidence, or with the
# reason there is none: consent must be demonstrable (Art. 7(1)). The other bases rest on the
# controller's own assessment, not on something the caller did, so evidence is optional for them.
EVIDENCE_REQUIRED: frozenset[LawfulBasis] = frozenset({LawfulBasis.CONSENT})
MAX_EVIDENCE_BYTES = 64 * 1024
EXPORT_GAP_MS = 10 * 60 * 1000  # the silence an export lays out beyond twice the audio held

log = logging.getLogger(__name__)


class ImportRefused(ValueError):
    """An import that would store a recording the service cannot stand behind."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportEvidence:
    """What the controller gives with a recording made elsewhere: the evidence of its lawful
    basis (e.g. "consent given orally to agent 12 at 10:02, ticket 4711"), or, exactly
    instead, the reason it has none. Kept as the recording's consent evidence and audited."""

    text: str | None = None
    source: str | None = None  # the file the text came from, by name
    no_evidence_reason: str | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.text, self.no_evidence_reason) if v is not None]
        if len(given) != 1:
            raise ImportRefused("give either evidence or the reason there is none, not both")
        if not given[0].strip():
            what = "the evidence" if self.text is not None else "the no-evidence reason"
            raise ImportRefused(f"{what} is empty")
        if self.source is not None and self.text is None:
            raise ImportRefused("an evidence file needs its text")

    @classmethod
    def from_file(cls, path: Path) -> ImportEvidence:
        """The evidence in a UTF-8 text file (at most 64 KiB): a note, an e-mail, a form."""
        data = path.read_bytes()
        if len(data) > MAX_EVIDENCE_BYTES:
            raise ImportRefused(
                f"evidence file {path} is {len(data)} bytes; at most {MAX_EVIDENCE_BYTES} "
                "(give a summary, and keep the original with the controller)"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ImportRefused(f"evidence file {path} is not UTF-8 text") from None
        return cls(text=text, source=path.name)

    @property
    def kind(self) -> str:
        """How the basis is evidenced, as the audit log says it: file, text or none."""
        if self.text is None:
            return "none"
        return "file" if self.source is not None else "text"

    def record(
        self, *, lawful_basis: LawfulBasis, purpose: str, audio: str, at: str
    ) -> dict[str, Any]:
        """The consent evidence stored with the recording (docs/recording-format.md)."""
        return {
            "origin": "import",
            "lawful_basis": lawful_basis.value,
            "purpose": purpose,
            "audio_file": audio,
            "imported_at": at,
            "evidence": self.text,
            "evidence_file": self.source,
            "evidence_sha256": (
                None if self.text is None else hashlib.sha256(self.text.encode()).hexdigest()
            ),
            "no_evidence_reason": self.no_evidence_reason,
        }


def check_import(lawful_basis: LawfulBasis, evidence: ImportEvidence | None) -> None:
    """Refuse, before any audio is read, an import whose basis needs evidence and has none."""
    if evidence is None and lawful_basis in EVIDENCE_REQUIRED:
        raise ImportRefused(
            f"a recording imported under lawful basis {lawful_basis.value} needs the evidence of "
            "it (Art. 7(1)): give --evidence TEXT or --evidence-file FILE, or say why there is "
            "none with --no-evidence-reason TEXT"
        )


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
    caller: str | None = None,
    evidence: ImportEvidence | None = None,
) -> RecordingRow:
    """Record converted audio through the same writer as a call.

    Stereo is taken as caller (left) and agent (right), mirroring what export produces.
    ``caller`` (E.164, normalised as for a subject request) is stored as a call's is: keyed
    hash and sealed copy, so that subject requests and breach counts find the recording.
    ``evidence`` is required under the bases in EVIDENCE_REQUIRED (see ``check_import``).
    """
    check_import(lawful_basis, evidence)
    if caller is not None and normalise_number(caller) != caller:
        raise ImportRefused(f"caller {caller!r} is not a normalised E.164 number")
    framed = audio.tracks
    path = audio.path
    call_id = vault.open_call(tenant=tenant, platform="import", caller=caller)
    record = (
        None
        if evidence is None
        else evidence.record(
            lawful_basis=lawful_basis, purpose=purpose, audio=path.name, at=utc_iso(vault.clock())
        )
    )
    rec = vault.start_recording(
        tenant=tenant,
        call_id=call_id,
        lawful_basis=lawful_basis,
        purpose=purpose,
        consent_evidence=record,
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
        detail={
            "source": path.name,
            "status": row.status.value,
            "caller": caller is not None,
            "evidence": "none given" if evidence is None else evidence.kind,
            "evidence_sha256": None if record is None else record["evidence_sha256"],
            "no_evidence_reason": None if evidence is None else evidence.no_evidence_reason,
        },
    )
    return row


def _timeline_limit(row: RecordingRow) -> int:
    """How many samples per track an export of ``row`` may lay out: its length in the catalog
    (plus a second), and never more than twice the audio its blob could hold plus ten minutes
    of gaps. Frames a platform timed at 46 days into a 5 s recording (written before the
    service checked media timestamps) cannot make an export allocate 60 GiB."""
    rate = row.sample_rate
    limit = ((row.duration_ms + 1000) * rate // 1000) if row.duration_ms is not None else None
    if row.blob_size is not None:
        held = 2 * row.blob_size // SAMPLE_BYTES[row.codec] + EXPORT_GAP_MS * rate // 1000
        limit = held if limit is None else min(limit, held)
    return limit if limit is not None else 2**62


def decode_recording(vault: Vault, row: RecordingRow, *, private_key: Any = None) -> np.ndarray:
    """A finished recording verified, decrypted and decoded: int16 (samples, tracks), caller
    first. Raises before returning anything if any chunk fails verification. ``private_key``
    opens a recording sealed to its tenant's public key."""
    if len(row.tracks) > 2:
        raise ValueError(f"recording {row.id} has {len(row.tracks)} tracks; WAV export takes 2")
    limit = _timeline_limit(row)
    expected = min((row.duration_ms or 0) * row.sample_rate // 1000, limit)
    timeline = Timeline(row.codec, row.sample_rate, len(row.tracks), expected_samples=expected)
    left_out, width = 0, SAMPLE_BYTES[row.codec]
    with vault.open_reader(row.id, private_key=private_key) as reader:
        for batch in reader.batches():
            tracks, times, lengths, payload = (
                batch.tracks,
                batch.timestamps_ms,
                batch.lengths,
                batch.payload,
            )
            inside = times * row.sample_rate // 1000 + lengths // width <= limit
            if not inside.all():
                left_out += int((~inside).sum())
                payload = payload[np.repeat(inside, lengths)]
                tracks, times, lengths = tracks[inside], times[inside], lengths[inside]
            timeline.add_arrays(tracks, times, lengths, payload)
    if left_out:
        log.warning(
            "recording %s: %d frames timed beyond its length (%d ms) left out of the export",
            row.id,
            left_out,
            limit * 1000 // row.sample_rate,
        )
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
