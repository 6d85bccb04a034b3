"""Recordings as vCons (``ivr recordings export ID --format vcon``).

Theory of operation: a recording is verified, decrypted and decoded once (the same path as the
WAV export, so a tampered blob yields nothing), written to a WAV in memory, and then laid out by
one pure function as a vCon (draft-ietf-vcon-vcon-core) holding

* two parties: the caller (``tel``, when the number is known) and the tenant's side;
* one ``recording`` dialog with the WAV inline (base64url, no padding) or, with ``inline=False``,
  a ``url`` and the draft's ``sha512-<base64url>`` ``content_hash`` of a WAV written next to it;
* a ``lawful_basis`` attachment (draft-howe-vcon-lawful-basis) whose body carries a SHA-256 over
  its JCS (RFC 8785) canonical form, and our consent evidence verbatim in a second attachment.

The files are staged with mode 0600 (they hold personal data), renamed into place together, and
the export is audited like a WAV export. docs/vcon.md describes every field and how to check
the hashes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ivr.consent import RECORDING_DECISIONS, ConsentEvidence
from ivr.gdpr.recording_files import decode_recording
from media.wavfile import write_wav
from storage.catalog import RecordingRow
from storage.files import fsync_dir, private_file, utc_iso
from storage.vault import Vault

__all__ = [
    "CONSENT_EVIDENCE",
    "LAWFUL_BASIS",
    "VCON_SYNTAX",
    "build_vcon",
    "canonical_json",
    "content_hash",
    "export_vcon",
    "lawful_basis_hash",
    "vcon_uuid",
    "wav_path_for",
]

# The core draft deprecates "vcon" but fixes its value for its syntax; older readers (e.g. the
# `vcon` package on PyPI) still read it.
VCON_SYNTAX = "0.4.0"
MEDIATYPE = "audio/x-wav"  # the core draft's suggested media type for WAV
LAWFUL_BASIS = "lawful_basis"
CONSENT_EVIDENCE = "consent_evidence"
# vCon uuids are derived from recording ids in this namespace, so re-exporting a recording gives
# the same uuid (the core draft's SHOULD is a v8 UUID; see docs/vcon.md).
VCON_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:ivr-consent:vcon")
CALLER_PARTY, TENANT_PARTY = 0, 1
# What the evidence's ``proof_data`` carries: the fields the record marks as its proof (what was
# asked, in which words and audio, and what the caller answered); the whole record is in the
# consent_evidence attachment.
PROOF_FIELDS: tuple[str, ...] = ConsentEvidence.proof_field_names()
MAX_SAFE_INTEGER = 2**53


# -- JCS (RFC 8785) -------------------------------------------------------------------------------
_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def canonical_json(value: Any) -> str:
    """The RFC 8785 (JCS) canonical form of a JSON value built from dict (string keys), list,
    str, int, float, bool and None. Keys sort by UTF-16 code units, numbers print as ECMAScript
    does, strings escape only what JSON requires. Raises ValueError for what I-JSON forbids
    (NaN, infinities, integers beyond 2**53, unpaired surrogates) and TypeError for other types.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(f"integer {value} is not exactly representable in JSON (I-JSON)")
        return str(value)
    if isinstance(value, float):
        return _es6_number(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys are strings, got {key!r}")
        keys = sorted(value, key=_utf16_units)
        return "{" + ",".join(f"{_string(k)}:{canonical_json(value[k])}" for k in keys) + "}"
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _utf16_units(key: str) -> bytes:
    # Big-endian UTF-16 bytes compare exactly as the sequences of code units do.
    return key.encode("utf-16-be", "surrogatepass")


def _string(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"string {text!r} has an unpaired surrogate (not I-JSON)") from None
    out = []
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _es6_number(x: float) -> str:
    """ECMAScript Number::toString (ECMA-262 7.1.12.1) from Python's shortest round-trip repr."""
    if not math.isfinite(x):
        raise ValueError(f"{x} is not a JSON number")
    if x == 0:
        return "0"  # -0 too
    sign = "-" if x < 0 else ""
    mantissa, _, exponent = repr(abs(x)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    raw = whole + fraction
    stripped = raw.lstrip("0")
    # value = 0.<digits> x 10**n, with digits the k significant digits
    n = len(whole) + int(exponent or 0) - (len(raw) - len(stripped))
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        e = n - 1
        head = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
        text = f"{head}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + text


def lawful_basis_hash(body: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the JCS form of a lawful_basis body without its ``content_hash``."""
    unhashed = {k: v for k, v in body.items() if k != "content_hash"}
    return hashlib.sha256(canonical_json(unhashed).encode("utf-8")).hexdigest()


# -- vCon pieces ----------------------------------------------------------------------------------
def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2), as the vCon draft requires."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def content_hash(data: bytes) -> str:
    """The vCon core ContentHash token of externally referenced content: ``sha512-<b64url>``."""
    return "sha512-" + b64url(hashlib.sha512(data).digest())


def vcon_uuid(recording_id: str) -> str:
    return str(uuid.uuid5(VCON_NAMESPACE, recording_id))


def wav_path_for(out: Path) -> Path:
    """Where ``--reference`` writes the audio: next to the vCon, same stem, ``.wav``."""
    if out.suffix.lower() == ".wav":
        raise ValueError(
            f"{out}: the vCon itself cannot be a .wav file when its audio is written next to "
            "it; name it e.g. .json or .vcon"
        )
    return out.with_suffix(".wav")


def _wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    mono = samples.shape[1] == 1
    write_wav(buf, samples[:, 0] if mono else np.ascontiguousarray(samples), sample_rate)
    return buf.getvalue()


def _channel_parties(row: RecordingRow) -> list[int]:
    """Each WAV channel's party, in decode_recording's order (the caller's track first)."""
    tracks = list(row.tracks)
    if "caller" in tracks and tracks.index("caller") != 0:
        tracks.reverse()
    return [CALLER_PARTY if t == "caller" else TENANT_PARTY for t in tracks]


def _granted(evidence: Mapping[str, Any] | None) -> bool:
    """Granted unless the caller refused, hung up before deciding, or withdrew; a recording
    without evidence (e.g. imported) stands on the basis its controller asserted."""
    if not evidence:
        return True
    decision = evidence.get("decision")
    if evidence.get("withdrawn_at"):
        return False
    return decision is None or decision in RECORDING_DECISIONS


def _proof(row: RecordingRow, evidence: Mapping[str, Any]) -> dict[str, Any]:
    data = {name: evidence.get(name) for name in PROOF_FIELDS}
    if row.policy_id is not None:
        data["policy_id"] = row.policy_id
    if row.policy_version is not None:
        data["policy_version"] = row.policy_version
    pressed = evidence.get("key_pressed") is not None
    if pressed:
        # The draft has no DTMF proof type: a key pressed by the caller in answer to the prompt
        # is their confirmation within the conversation; "method" says it was a key, not speech.
        data["method"] = "dtmf"
    return {
        "proof_type": "verbal_confirmation" if pressed else "external_system",
        "timestamp": evidence.get("key_pressed_at")
        or evidence.get("decided_at")
        or evidence.get("prompt_started_at")
        or row.started_at,
        "proof_data": data,
    }


def lawful_basis_body(row: RecordingRow) -> dict[str, Any]:
    """The draft-howe-vcon-lawful-basis body for a recording, content_hash included."""
    evidence = row.consent_evidence
    granted_at = (evidence or {}).get("decided_at") or row.started_at
    body: dict[str, Any] = {
        "lawful_basis": row.lawful_basis,
        "expiration": row.retention_until,
        "purpose_grants": [
            {"purpose": row.purpose, "granted": _granted(evidence), "granted_at": granted_at}
        ],
        "proof_mechanisms": [_proof(row, evidence)] if evidence else [],
    }
    body["content_hash"] = {
        "algorithm": "sha-256",
        "canonicalization": "jcs",
        "value": lawful_basis_hash(body),
    }
    return body


def layout(
    row: RecordingRow,
    wav: bytes,
    *,
    duration_s: float,
    caller: str | None,
    application: str | None,
    now: datetime,
    inline: bool,
    url: str | None = None,
    filename: str | None = None,
) -> dict[str, Any]:
    """The vCon for a decoded recording (pure: everything it shows is passed in)."""
    caller_party: dict[str, Any] = {"tel": caller} if caller else {}
    caller_party["role"] = "customer"
    dialog: dict[str, Any] = {
        "type": "recording",
        "start": row.started_at,
        "duration": float(duration_s),
        "parties": _channel_parties(row),
        "mediatype": MEDIATYPE,
        # The pre-core container drafts (and the `vcon` package's validator) call it mimetype.
        "mimetype": MEDIATYPE,
        "filename": filename or f"{row.id}.wav",
    }
    if application:
        dialog["application"] = application
    if inline:
        dialog["encoding"] = "base64url"
        dialog["body"] = b64url(wav)
    else:
        dialog["url"] = url or dialog["filename"]
        dialog["content_hash"] = content_hash(wav)
    basis = lawful_basis_body(row)
    anchor = {"start": basis["purpose_grants"][0]["granted_at"], "party": CALLER_PARTY, "dialog": 0}
    attachments: list[dict[str, Any]] = [
        # "type" is PROTOCOLS.md's and the draft's -00/-01 tag, "purpose" its -02 one.
        {"type": LAWFUL_BASIS, "purpose": LAWFUL_BASIS, **anchor, "encoding": "json", "body": basis}
    ]
    if row.consent_evidence:
        attachments.append(
            {
                "type": CONSENT_EVIDENCE,
                "purpose": CONSENT_EVIDENCE,
                **anchor,
                "encoding": "json",
                "body": row.consent_evidence,
            }
        )
    return {
        "vcon": VCON_SYNTAX,
        "uuid": vcon_uuid(row.id),
        "extensions": [LAWFUL_BASIS],
        "created_at": utc_iso(now),
        "subject": f"call recording {row.id}",
        "parties": [caller_party, {"name": row.tenant, "role": "agent"}],
        "dialog": [dialog],
        "attachments": attachments,
    }


def _load(
    vault: Vault, recording_id: str, private_key: Any
) -> tuple[RecordingRow, bytes, float, str | None, str | None]:
    row = vault.get(recording_id)
    samples = decode_recording(vault, row, private_key=private_key)  # verifies, or raises
    wav = _wav_bytes(samples, row.sample_rate)
    caller = application = None
    if row.call_id:
        caller = vault.caller_of(row.call_id, private_key=private_key)
        call = vault.catalog.call(row.call_id)
        application = call["platform"] if call is not None else None
    return row, wav, samples.shape[0] / row.sample_rate, caller, application


def build_vcon(
    vault: Vault,
    recording_id: str,
    *,
    inline: bool = True,
    reference_url: str | None = None,
    private_key: Any = None,
    now: datetime,
) -> dict[str, Any]:
    """A recording as a vCon dict. ``inline=False`` refers to the WAV by ``reference_url``
    (default: ``<id>.wav``) with its SHA-512; writing that WAV is the caller's business (see
    export_vcon). ``private_key`` opens a recording sealed to its tenant's public key."""
    if inline and reference_url is not None:
        raise ValueError("a reference URL is for a vCon that refers to its audio (inline=False)")
    row, wav, duration, caller, application = _load(vault, recording_id, private_key)
    return layout(
        row,
        wav,
        duration_s=duration,
        caller=caller,
        application=application,
        now=now,
        inline=inline,
        url=reference_url,
    )


def export_vcon(
    vault: Vault,
    recording_id: str,
    out: Path,
    *,
    actor: str,
    reason: str,
    inline: bool = True,
    base_url: str | None = None,
    private_key: Any = None,
) -> dict[str, Any]:
    """Write a recording as a vCon JSON file (and, with ``inline=False``, its WAV next to it as
    ``wav_path_for(out)``, referenced by file name or ``base_url``/name); audited. Returns the
    vCon. Nothing appears under either name unless everything verified and was written."""
    if inline and base_url is not None:
        raise ValueError("a base URL is for a vCon that refers to its audio (--reference)")
    wav_out = None if inline else wav_path_for(out)
    row, wav, duration, caller, application = _load(vault, recording_id, private_key)
    url = None
    if wav_out is not None:
        url = quote(wav_out.name)
        if base_url:
            url = f"{base_url.rstrip('/')}/{url}"
    doc = layout(
        row,
        wav,
        duration_s=duration,
        caller=caller,
        application=application,
        now=vault.clock(),
        inline=inline,
        url=url,
        filename=wav_out.name if wav_out is not None else None,
    )
    text = json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    staged: list[tuple[Path, Path]] = []
    try:
        if wav_out is not None:
            staged.append((_stage(wav_out, wav), wav_out))
        staged.append((_stage(out, text.encode("utf-8")), out))
        for tmp, final in staged:  # the WAV first: the vCon never names a missing file
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    fsync_dir(out.absolute().parent)
    vault.audit(
        actor=actor,
        action="recording.exported",
        tenant=row.tenant,
        target=recording_id,
        detail={"format": "vcon", "reason": reason},
    )
    return doc


def _stage(path: Path, data: bytes) -> Path:
    """``data`` in a private (0600), synced temporary file beside ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with private_file(tmp) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
