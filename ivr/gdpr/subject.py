"""Data subject requests: find, export (Art. 15) and erase (Art. 17) everything about one caller.

The caller is named by phone number, parsed and normalised to E.164 with phonenumbers, and found
through the keyed hash the vault keeps for each call. An export is one zip file: every recording
as WAV, its metadata as JSON (lawful basis, purpose, consent evidence, retention date, who
accessed it), and a summary page in the caller's language.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import phonenumbers

from ivr.gdpr.recording_files import decode_recording
from media.wavfile import write_wav
from storage.catalog import RecordingRow, RecordingStatus
from storage.files import private_file
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
SUMMARY_TEXT = {
    "en": {
        "title": "Your call recordings",
        "intro": "This export holds every call recording kept about the telephone number {phone} "
        "by {controllers}, as of {now}.",
        "none": "No recordings are kept about this number.",
        "recording": "Recording",
        "when": "When",
        "basis": "Lawful basis",
        "purpose": "Purpose",
        "consent": "Your choice",
        "kept_until": "Kept until",
        "file": "Audio file",
        "rights": "You may ask for these recordings to be erased, or object to their use, by "
        "contacting the data protection officer: {dpo}.",
    },
    "sv": {
        "title": "Dina samtalsinspelningar",
        "intro": "Den här exporten innehåller alla samtalsinspelningar som {controllers} sparar om "
        "telefonnumret {phone}, per {now}.",
        "none": "Inga inspelningar sparas om det här numret.",
        "recording": "Inspelning",
        "when": "När",
        "basis": "Rättslig grund",
        "purpose": "Ändamål",
        "consent": "Ditt val",
        "kept_until": "Sparas till",
        "file": "Ljudfil",
        "rights": "Du kan begära att inspelningarna raderas, eller invända mot att de används, "
        "genom att kontakta dataskyddsombudet: {dpo}.",
    },
}
BASIS_WORDS = {
    "en": {
        "consent": "your consent",
        "contract": "a contract with you",
        "legal_obligation": "a legal obligation",
        "vital_interests": "vital interests",
        "public_task": "a task in the public interest",
        "legitimate_interests": "legitimate interests",
    },
    "sv": {
        "consent": "ditt samtycke",
        "contract": "avtal med dig",
        "legal_obligation": "rättslig förpliktelse",
        "vital_interests": "grundläggande intressen",
        "public_task": "uppgift av allmänt intresse",
        "legitimate_interests": "berättigat intresse",
    },
}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    recordings: int
    tenants: list[str]


def export(
    vault: Vault,
    phone: str,
    tenants: list[str],
    out: Path,
    *,
    actor: str,
    reason: str,
    dpo_contacts: dict[str, str],
    controller_names: dict[str, str],
    language: str | None = None,
    now: str,
    private_key: Any = None,
) -> ExportResult:
    """Write the subject access export; nothing is written under ``out`` unless it all worked."""
    groups = find(vault, phone, tenants)
    rows = [r for g in groups for r in g.recordings if r.status is not RecordingStatus.ERASED]
    lang = language or _language_of(rows) or "en"
    words = SUMMARY_TEXT.get(lang, SUMMARY_TEXT["en"])
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        with private_file(tmp) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            entries = []
            for row in rows:
                name = None
                if row.status in (RecordingStatus.COMPLETE, RecordingStatus.INCOMPLETE):
                    name = f"recordings/{row.id}.wav"
                    zf.writestr(name, _wav_bytes(vault, row, private_key))
                meta = _metadata(vault, row)
                zf.writestr(
                    f"recordings/{row.id}.json", json.dumps(meta, indent=2, ensure_ascii=False)
                )
                entries.append((row, name))
            used = sorted({g.tenant for g in groups})
            controllers = ", ".join(controller_names.get(t, t) for t in used) or "-"
            dpos = "; ".join(dpo_contacts.get(t, "-") for t in used) or "-"
            zf.writestr(
                "summary.html",
                _summary_html(words, lang, phone, controllers, dpos, now, entries),
            )
            zf.writestr(
                "summary.json",
                json.dumps(
                    {
                        "phone": phone,
                        "generated_at": now,
                        "controllers": used,
                        "recordings": [r.id for r, _ in entries],
                    },
                    indent=2,
                ),
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    for group in groups:
        vault.audit(
            actor=actor,
            action="subject.exported",
            tenant=group.tenant,
            detail={
                "subject": subject_digest(phone),
                "reason": reason,
                "recordings": [r.id for r in group.recordings],
            },
        )
    return ExportResult(out, len(rows), sorted({g.tenant for g in groups}))


def _language_of(rows: list[RecordingRow]) -> str | None:
    for row in rows:
        if row.consent_evidence and row.consent_evidence.get("language"):
            return str(row.consent_evidence["language"])
    return None


def _wav_bytes(vault: Vault, row: RecordingRow, private_key: Any) -> bytes:
    samples = decode_recording(vault, row, private_key=private_key)
    buf = io.BytesIO()
    write_wav(buf, samples[:, 0] if samples.shape[1] == 1 else samples, row.sample_rate)
    return buf.getvalue()


def _metadata(vault: Vault, row: RecordingRow) -> dict[str, Any]:
    accesses = [
        {"at": e.at, "actor": e.actor, "action": e.action, "reason": e.detail.get("reason")}
        for e in vault.catalog.audit_events()
        if e.target == row.id
    ]
    meta = row.public()
    meta["access_log"] = accesses
    return meta


def _summary_html(
    words: dict[str, str],
    lang: str,
    phone: str,
    controllers: str,
    dpo: str,
    now: str,
    entries: list[tuple[RecordingRow, str | None]],
) -> str:
    e = html.escape
    basis_words = BASIS_WORDS.get(lang, BASIS_WORDS["en"])
    rows = []
    for row, name in entries:
        decision = (row.consent_evidence or {}).get("decision") or "-"
        rows.append(
            "<tr>"
            f"<td>{e(row.id)}</td><td>{e(row.started_at)}</td>"
            f"<td>{e(basis_words.get(row.lawful_basis, row.lawful_basis))}</td>"
            f"<td>{e(row.purpose)}</td><td>{e(decision)}</td>"
            f"<td>{e(row.retention_until or '-')}</td>"
            f"<td>{e(name or '-')}</td>"
            "</tr>"
        )
    table = (
        "<table><tr>"
        + "".join(
            f"<th>{e(words[k])}</th>"
            for k in ("recording", "when", "basis", "purpose", "consent", "kept_until", "file")
        )
        + "</tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else f"<p>{e(words['none'])}</p>"
    )
    intro = words["intro"].format(phone=phone, controllers=controllers, now=now)
    return (
        f'<!doctype html><html lang="{e(lang)}"><head><meta charset="utf-8">'
        f"<title>{e(words['title'])}</title></head><body>"
        f"<h1>{e(words['title'])}</h1><p>{e(intro)}</p>{table}"
        f"<p>{e(words['rights'].format(dpo=dpo))}</p></body></html>"
    )


def held_back_message(report: ErasureReport) -> list[str]:
    lines = [f"{rid}: kept, under legal hold ({why})" for rid, why in report.held]
    lines += [f"{rid}: kept, {why}" for rid, why in report.skipped]
    return lines


__all__ = [
    "ExportResult",
    "SubjectError",
    "erase",
    "export",
    "find",
    "held_back_message",
    "normalise_phone",
]
