"""Data subject requests: find, export (Art. 15) and erase (Art. 17) everything about one caller.

The caller is named by phone number, parsed and normalised to E.164 with phonenumbers, and found
through the keyed hash the vault keeps for each call. An export is one zip file, 0600: every
recording as WAV (or, sealed to a controller's public key without its private key, held sealed:
metadata only), its metadata as JSON (lawful basis, purpose, consent evidence, retention date,
who accessed it), and ``summary.html`` / ``summary.txt`` / ``summary.json``: every call (with or
without a recording) and the Art. 15(1)(a)-(h) information, derived from the configuration and
the data by :mod:`ivr.gdpr.access`, worded in the caller's language by :mod:`ivr.gdpr.access_text`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import phonenumbers

from ivr.config import Config
from ivr.gdpr.access import AccessReport, Audio, Processor, build_report, gather
from ivr.gdpr.access_text import LANGUAGES, render_html, render_text
from ivr.gdpr.recording_files import decode_recording
from media.wavfile import write_wav
from storage.catalog import RecordingRow
from storage.custody import as_private_key, key_ref_of, raw_public
from storage.files import private_dir, private_file
from storage.lifecycle import ErasureReport, SubjectCalls, erase_subject, find_subject
from storage.vault import Vault


class SubjectError(ValueError):
    pass


def normalise_phone(text: str, region: str | None = None) -> str:
    """E.164 for a number written internationally, or nationally with ``region`` (e.g. SE)."""
    raw = text.strip()
    if raw.startswith("00"):
        raw = "+" + raw[2:]
    try:
        number = phonenumbers.parse(raw, None if raw.startswith("+") else region)
    except phonenumbers.NumberParseException as exc:
        hint = (
            ""
            if region or raw.startswith("+")
            else " (give --region, e.g. SE, for a national number)"
        )
        raise SubjectError(f"{text!r} is not a phone number: {exc}{hint}") from None
    if not phonenumbers.is_possible_number(number):
        raise SubjectError(f"{text!r} is not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def subject_digest(e164: str) -> str:
    """How the audit log may refer to a number without containing it: a short one-way tag."""
    return hashlib.sha256(b"ivr subject\x00" + e164.encode()).hexdigest()[:12]


def find(vault: Vault, phone: str, tenants: list[str]) -> list[SubjectCalls]:
    return find_subject(vault, phone, tenants)


def erase(
    vault: Vault, phone: str, tenants: list[str], *, reason: str, actor: str
) -> ErasureReport:
    if not reason.strip():
        raise SubjectError("an erasure needs a reason")
    return erase_subject(vault, find(vault, phone, tenants), reason=reason, actor=actor)


# -- export ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ExportResult:
    path: Path
    recordings: int
    tenants: list[str]
    report: AccessReport

    @property
    def sealed(self) -> list[tuple[str, str]]:
        """(recording id, key ref) of every recording held sealed, its audio not exported."""
        return [(r.row.id, r.row.key_ref or "") for r in self.report.sealed]

    def as_dict(self) -> dict[str, Any]:
        report = self.report
        return {
            "output": str(self.path),
            "recordings": self.recordings,
            "tenants": self.tenants,
            "calls": len(report.calls),
            "calls_without_recording": sum(1 for c in report.calls if not c.recordings),
            "audio_included": [r.row.id for r in report.recordings if r.audio is Audio.INCLUDED],
            "held_sealed": [{"id": rid, "key_ref": ref} for rid, ref in self.sealed],
            "language": report.language,
            "language_from": report.language_from,
            "gaps": [s.as_dict() for s in report.gaps],
        }


def export(
    vault: Vault,
    phone: str,
    tenants: list[str],
    out: Path,
    *,
    actor: str,
    reason: str,
    config: Config,
    language: str | None = None,
    now: str,
    private_key: Any = None,
    processor: Processor | None = None,
) -> ExportResult:
    """Write the subject access export to the file ``out``; nothing is written under ``out``
    unless it all worked. The zip is 0600, a missing folder for it 0700.

    Recordings sealed to a public key that ``private_key`` does not open are exported as held,
    sealed: their metadata without audio."""
    report = _report(vault, phone, tenants, config, language, now, private_key, processor)
    private_dir(out.parent)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    tmp.unlink(missing_ok=True)
    try:
        with private_file(tmp) as fh:
            _write_zip(fh, vault, report, private_key)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    tenants_used = _audit_export(vault, report, phone, actor, reason)
    return ExportResult(out, len(report.recordings), tenants_used, report)


def export_bytes(
    vault: Vault,
    phone: str,
    tenants: list[str],
    *,
    actor: str,
    reason: str,
    config: Config,
    language: str | None = None,
    now: str,
    processor: Processor | None = None,
) -> bytes:
    """The same export as :func:`export`, built in memory: for the API, which sends it on, so
    that no copy of it in clear ever lies on the service's disk (not even in a temporary
    folder, which a crash would leave behind)."""
    report = _report(vault, phone, tenants, config, language, now, None, processor)
    buf = io.BytesIO()
    _write_zip(buf, vault, report, None)
    _audit_export(vault, report, phone, actor, reason)
    return buf.getvalue()


def _report(
    vault: Vault,
    phone: str,
    tenants: list[str],
    config: Config,
    language: str | None,
    now: str,
    private_key: Any,
    processor: Processor | None,
) -> AccessReport:
    if language is not None and language not in LANGUAGES:
        raise SubjectError(f"no summary in language {language!r}: one of {', '.join(LANGUAGES)}")
    key_ref = None
    if private_key is not None:
        key_ref = key_ref_of(raw_public(as_private_key(private_key)))
    return build_report(
        gather(vault, phone, tenants, subject_digest(phone)),
        config,
        phone=phone,
        now=now,
        language=language,
        languages=LANGUAGES,
        private_key_ref=key_ref,
        processor=processor or Processor(),
    )


def _write_zip(fh: BinaryIO, vault: Vault, report: AccessReport, private_key: Any) -> None:
    with zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry in report.recordings:
            if entry.audio_file is not None:
                zf.writestr(entry.audio_file, _wav_bytes(vault, entry.row, private_key))
            zf.writestr(
                f"recordings/{entry.row.id}.json",
                json.dumps(entry.as_dict(), indent=2, ensure_ascii=False),
            )
        zf.writestr("summary.html", render_html(report))
        zf.writestr("summary.txt", render_text(report))
        zf.writestr("summary.json", json.dumps(report.as_dict(), indent=2, ensure_ascii=False))


def _audit_export(
    vault: Vault, report: AccessReport, phone: str, actor: str, reason: str
) -> list[str]:
    """One ``subject.exported`` entry per controller the export drew on; their tenants."""
    tag = subject_digest(phone)
    used = sorted({c.tenant for c in report.controllers})
    for tenant in used:
        vault.audit(
            actor=actor,
            action="subject.exported",
            tenant=tenant,
            detail={
                "subject": tag,
                "reason": reason,
                "recordings": [r.row.id for r in report.recordings if r.row.tenant == tenant],
                "calls": sum(1 for c in report.calls if c.call.tenant == tenant),
                "held_sealed": [r.row.id for r in report.sealed if r.row.tenant == tenant],
            },
        )
    return used


def _wav_bytes(vault: Vault, row: RecordingRow, private_key: Any) -> bytes:
    samples = decode_recording(vault, row, private_key=private_key)
    buf = io.BytesIO()
    write_wav(buf, samples[:, 0] if samples.shape[1] == 1 else samples, row.sample_rate)
    return buf.getvalue()


def held_back_message(report: ErasureReport) -> list[str]:
    lines = [f"{rid}: kept, under legal hold ({why})" for rid, why in report.held]
    lines += [f"{rid}: kept, {why}" for rid, why in report.skipped]
    return lines


__all__ = [
    "ExportResult",
    "Processor",
    "SubjectError",
    "erase",
    "export",
    "export_bytes",
    "find",
    "held_back_message",
    "normalise_phone",
]
