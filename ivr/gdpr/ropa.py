"""``ivr ropa``: the GDPR Art. 30 records of processing activities, from the live configuration.

One Art. 30(1) record per controller (tenant), the Art. 30(2) record of the processor (the
contact centre operating this service) and an annex of technical and organisational measures
(Art. 32). Everything controller-specific comes from the configuration; what the service does
comes from the code's own constants (chunk interval, fsync interval, sweep interval, API roles);
the document names the configuration file and its SHA-256 so a contract annex can be tied to the
exact configuration it describes. What the service cannot know (the processor's identity, hosting,
backups, sub-processors beyond the telephony carriers, the controller's own systems) is listed
under ``to_complete``. docs/ropa.md describes the output.

``build_ropa`` returns a JSON-ready dict; ``render_markdown`` turns it into a document.
"""

from __future__ import annotations

import hashlib
import inspect
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ivr import __version__
from ivr.capabilities import PLATFORMS, WithdrawChannel
from ivr.config import Config, Line, Tenant
from ivr.consent import ConsentEvidence
from ivr.gdpr.breach import COMMANDS as BREACH_COMMANDS
from ivr.gdpr.ropa_places import Places
from ivr.policy import ConsentMode, LawfulBasis
from ivr.wording import OPENING_PROMPT
from storage.blob_url import DEFAULT_SEGMENT_CHUNKS
from storage.blobs import DEFAULT_SYNC_INTERVAL
from storage.custody import key_ref_of
from storage.keys import MASTER_KEY_ENV, MASTER_KEY_FILE
from storage.vault import Vault

__all__ = [
    "BASIS_ARTICLES",
    "DEFAULT_PROCESSOR_CONTACT",
    "DEFAULT_PROCESSOR_NAME",
    "EVIDENCE_FIELDS",
    "ProcessorInfo",
    "UnknownTenant",
    "build_ropa",
    "render_markdown",
]

DEFAULT_PROCESSOR_NAME = "the operator of this service"
DEFAULT_PROCESSOR_CONTACT = "-"
# Checked at run time: the breach workflow is referenced only where it is installed.

# GDPR Art. 6(1) points, in the order of the Regulation.
BASIS_ARTICLES: dict[LawfulBasis, tuple[str, str]] = {
    LawfulBasis.CONSENT: ("Art. 6(1)(a)", "consent of the data subject"),
    LawfulBasis.CONTRACT: (
        "Art. 6(1)(b)",
        "performance of a contract with the data subject, or steps at their request before "
        "entering into one",
    ),
    LawfulBasis.LEGAL_OBLIGATION: (
        "Art. 6(1)(c)",
        "compliance with a legal obligation of the controller",
    ),
    LawfulBasis.VITAL_INTERESTS: (
        "Art. 6(1)(d)",
        "protection of the vital interests of the data subject or of another person",
    ),
    LawfulBasis.PUBLIC_TASK: (
        "Art. 6(1)(e)",
        "performance of a task carried out in the public interest or in the exercise of "
        "official authority",
    ),
    LawfulBasis.LEGITIMATE_INTERESTS: (
        "Art. 6(1)(f)",
        "legitimate interests pursued by the controller or by a third party",
    ),
}

# The consent evidence kept with every recording: its fields, as the record's own type names them.
EVIDENCE_FIELDS: tuple[str, ...] = ConsentEvidence.field_names()


class UnknownTenant(ValueError):
    """``--tenant`` names no controller in the configuration."""


@dataclass(frozen=True, slots=True)
class ProcessorInfo:
    """Who operates the service (the processor): the configuration does not say."""

    name: str = DEFAULT_PROCESSOR_NAME
    contact: str = DEFAULT_PROCESSOR_CONTACT

    @property
    def placeholder(self) -> bool:
        return self.name == DEFAULT_PROCESSOR_NAME or self.contact == DEFAULT_PROCESSOR_CONTACT


# --------------------------------------------------------------------------- facts from the code


def _api_role_rights() -> dict[str, list[str]]:
    """What each admin API role may do, from the role sets ``ivr.api`` enforces."""
    from ivr import api  # the roles the API enforces

    rights: dict[str, list[str]] = {role: [] for role in api.ROLES}
    # The retention report's role set is written inline in ivr/api/routes.py (dpo and admin).
    table = (
        (api.READ_ROLES, "list and view recording metadata and consent evidence"),
        (api.AUDIO_ROLES, "play or download recordings (a reason is required and audited)"),
        (api.DPO_ONLY, "place and release legal holds, erase recordings"),
        (api.DPO_ONLY, "subject access export (Art. 15) and erasure (Art. 17)"),
        (frozenset({"dpo", "admin"}), "retention report"),
    )
    for roles, right in table:
        for role in api.ROLES:
            if role in roles:
                rights[role].append(right)
    return rights


def _runtime_facts(config: Config) -> dict[str, Any]:
    chunk_ms = inspect.signature(Vault.__init__).parameters["chunk_interval_ms"].default
    return {
        "chunk_interval_ms": chunk_ms,
        "fsync_interval_seconds": DEFAULT_SYNC_INTERVAL,
        "retention_sweep_seconds": config.retention_sweep_minutes * 60,
        "call_record_days": config.call_record_days,
        "key_rotate_every_days": config.key_rotate_every_days,
        "key_retire_after_days": config.key_retire_after_days,
    }


# --------------------------------------------------------------------------- helpers


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("now must carry a timezone")
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _join(items: Iterable[str], last: str = "and") -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {last} {items[-1]}"


def _unique(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def _same(lines: Sequence[Line], attr: str) -> Any:
    """The attribute's value when every line agrees on it, else None."""
    values = {getattr(line, attr) for line in lines}
    return values.pop() if len(values) == 1 else None


def _key(lines: Sequence[Line], attr: str, what: str) -> str:
    value = _same(lines, attr)
    return f"{value}" if value is not None else f"the line's {what} (see the lines)"


def _custody(tenant: Tenant) -> dict[str, Any]:
    if tenant.key_custody == "public_key" and tenant.public_key is not None:
        return {
            "mode": "public_key",
            "key_ref": key_ref_of(tenant.public_key),
            "service_can_decrypt": False,
            "description": (
                "public key: every recording's data key and every caller number are sealed to "
                f"the controller's X25519 public key ({key_ref_of(tenant.public_key)}); the "
                "controller keeps the private key and the service cannot decrypt what it stored"
            ),
        }
    return {
        "mode": "local",
        "key_ref": None,
        "service_can_decrypt": True,
        "description": (
            "local: data keys are wrapped by the controller's versioned key-encryption key in "
            "the service's keyring, sealed under the master key; the service can decrypt, and "
            "every decryption for playback or export is audited"
        ),
    }


def _tracks(line: Line) -> str:
    if line.forward_to is not None:
        return "caller and agent"
    return "caller only"


# --------------------------------------------------------------------------- Art. 30(1)


def _lawful_basis(lines: Sequence[Line], basis: LawfulBasis, tenant: Tenant) -> dict[str, Any]:
    article, name = BASIS_ARTICLES[basis]
    modes = _unique(line.consent_mode for line in lines)
    how: list[str] = []
    for mode in modes:
        group = [line for line in lines if line.consent_mode is mode]
        numbers = _join(line.number for line in group)
        prompt = OPENING_PROMPT.get(mode)
        if mode is ConsentMode.OPT_IN:
            how.append(
                f"{numbers}: explicit opt-in by keypad (DTMF). Before anything is recorded the "
                f"caller hears the {prompt} prompt in the line's language and is asked to press "
                f"{_key(group, 'accept_key', 'accept key')}; recording starts only after that "
                f"key. The decline key {_key(group, 'decline_key', 'decline key')}, silence for "
                f"{_key(group, 'prompt_timeout_seconds', 'prompt timeout')} s after the question "
                "or a third invalid key is a refusal (Art. 7, Recital 32: no consent from silence)."
            )
        elif mode is ConsentMode.OPT_OUT:
            how.append(
                f"{numbers}: the caller is told the purpose ({prompt} prompt) and may object "
                f"with the key {_key(group, 'decline_key', 'decline key')} (or the withdraw key) "
                "while it plays; recording starts only when the notice ends without objection."
            )
        elif mode is ConsentMode.NOTICE:
            how.append(
                f"{numbers}: the caller is told that and why the call is recorded ({prompt} "
                "prompt); there is no refusal key; recording starts when the notice ends."
            )
        else:
            how.append(
                f"{numbers}: nothing is said and recording starts at once (consent mode 'none', "
                "only for vital interests, e.g. emergency lines)."
            )
    if basis is LawfulBasis.CONSENT:
        evidence = (
            "How consent is evidenced (Art. 7(1)): each recording keeps the policy id and "
            "version, the words of the prompt and the SHA-256 of the audio actually played, when "
            "it played and whether in full, every prompt played, the keys in force, the key "
            "pressed and when, the decision and when, and when recording started, stopped or was "
            "withdrawn."
        )
    else:
        evidence = (
            "Each recording keeps the same record of what the caller was told and did: policy "
            "id and version, prompt words and audio hash, keys pressed and when, decision and "
            "times."
        )

    objection = None
    if basis in (LawfulBasis.LEGITIMATE_INTERESTS, LawfulBasis.PUBLIC_TASK):
        in_call = []
        if ConsentMode.OPT_OUT in modes:
            during = "during the notice with the objection key"
            if len(modes) > 1:
                opt_out = [
                    line.number for line in lines if line.consent_mode is ConsentMode.OPT_OUT
                ]
                during += f" (on {_join(opt_out)})"
            in_call.append(during)
        if any(line.withdrawable for line in lines):
            in_call.append(
                "while recording, by the channel each platform honours (below: the withdraw "
                "key, or asking the agent)"
            )
        objection = (
            "Right to object (Art. 21(1)): in the call "
            f"{_join(in_call, 'or')}; after the call through the controller's DPO "
            f"({tenant.dpo_contact}), who can erase the caller's recordings (ivr subject erase, "
            "or the admin API)."
        )

    withdrawal: list[str] = []
    for line in lines:
        if not line.withdrawable:
            withdrawal.append(
                f"{line.number}: no withdrawal during the call on this basis; requests go to the "
                "controller's DPO"
            )
            continue
        fate = (
            "what was already recorded is discarded (data key destroyed)"
            if line.discard_on_withdraw
            else "what was recorded until then is kept (discard_on_withdraw = false)"
        )
        for channel, platforms in _channels(line).items():
            on = f"{line.number} on {_join(platforms)}"
            if channel is WithdrawChannel.KEYS:
                withdrawal.append(
                    f"{on}: the key {line.withdraw_key} stops the recording for the rest of "
                    f"the call and {fate}"
                )
            else:
                early = (
                    f"; while the confirmation still plays, before the forward, the key "
                    f"{line.withdraw_key} does it"
                    if line.consent_mode is ConsentMode.OPT_IN
                    else ""
                )
                withdrawal.append(
                    f"{on}: no key reaches the service once the call is forwarded, so the "
                    "caller is told to ask the agent, who stops the recording (ivr calls "
                    f"withdraw, or the admin API; audited) and {fate}{early}"
                )
    if basis is LawfulBasis.CONSENT:
        withdrawal.append(
            "after the call (Art. 7(3)): through the controller's DPO, who can erase every "
            "recording of the caller"
        )
    return {
        "value": basis.value,
        "article": article,
        "name": name,
        "how": how,
        "evidence": evidence,
        "evidence_fields": list(EVIDENCE_FIELDS),
        "objection": objection,
        "withdrawal": withdrawal,
    }


def _channels(line: Line) -> dict[WithdrawChannel, list[str]]:
    """How the caller of ``line`` can withdraw, and on which of its platforms."""
    out: dict[WithdrawChannel, list[str]] = {}
    for name in line.platforms:
        out.setdefault(line.withdraw_channel(PLATFORMS[name]), []).append(name)
    return out


def _data_subjects(lines: Sequence[Line]) -> list[str]:
    out = [f"callers to the line(s) {_join(line.number for line in lines)}"]
    forwarded = [line for line in lines if line.forward_to is not None]
    if forwarded:
        targets = _join(_unique(line.forward_to or "" for line in forwarded))
        out.append(
            "agents who answer the calls forwarded from "
            f"{_join(line.number for line in forwarded)} (to {targets}): the controller's staff "
            "or people acting for it, e.g. the contact centre's agents; their voice is recorded"
        )
    return out


def _personal_data(lines: Sequence[Line], config: Config, tenant: Tenant) -> list[str]:
    voice = []
    for line in lines:
        if line.forward_to is not None:
            voice.append(
                f"{line.number}: both sides, caller and agent (the call is forwarded to "
                f"{line.forward_to}), from when recording is allowed, at most "
                f"{line.max_recording_seconds} s"
            )
        else:
            voice.append(
                f"{line.number}: the caller only (no forwarding: a message line), until they "
                f"hang up or at most {line.max_recording_seconds} s"
            )
    recording = "voice recordings of the call: " + "; ".join(voice)
    if config.asterisk is not None:
        recording += (
            " (calls that arrive through Asterisk are recorded as one mixed track of the "
            "bridge: the caller, and the agent once connected)"
        )
    sealed = (
        "sealed to the controller's public key"
        if tenant.key_custody == "public_key"
        else "encrypted under the controller's key"
    )
    return [
        recording,
        "the content of what is said: anything callers or agents say, which may include "
        "special categories of data (Art. 9) or data about other people; the service does not "
        "analyse it",
        f"the caller's telephone number (caller ID), for every call to the line, recorded or "
        f"not: stored {sealed}, plus a keyed hash (HMAC-SHA256) for finding a caller's calls",
        "call metadata: the line and its policy, the telephony platform's call id, start and "
        "end times, duration, outcome and the recording's status",
        "consent evidence: the prompt played, the keys pressed and when, the decision and when",
        "access and lifecycle records: who played, exported, held or erased a recording, when "
        "and why (the audit log refers to a phone number only by a one-way tag)",
    ]


def _recipients(config: Config, tenant: Tenant, now: datetime) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    rights = _api_role_rights()
    roles: dict[str, dict[str, Any]] = {}
    for token in config.api_tokens:
        if token.tenant != tenant.id:
            continue
        entry = roles.setdefault(
            token.role, {"tokens": 0, "expired": 0, "may": rights.get(token.role, [])}
        )
        entry["tokens"] += 1
        if token.expires is not None and now >= token.expires:
            entry["expired"] += 1
    roles = {role: roles[role] for role in sorted(roles)}
    if roles:
        listed = "; ".join(
            f"{role} ({r['tokens']} token(s), {r['expired']} expired): {', '.join(r['may'])}"
            for role, r in roles.items()
        )
        out.append(
            {
                "name": "the controller's own staff, through the admin API",
                "description": (
                    f"bearer tokens for this controller only, by role: {listed}. A token never "
                    "sees another controller's recordings."
                    + (
                        " Recordings sealed to the controller's public key cannot be played "
                        "through the API; the controller decrypts them with its private key."
                        if tenant.key_custody == "public_key"
                        else ""
                    )
                ),
                "roles": roles,
            }
        )
    else:
        out.append(
            {
                "name": "the controller's own staff, through the admin API",
                "description": "no admin API token is configured for this controller",
                "roles": {},
            }
        )
    processor_can = (
        "stores the recordings but cannot decrypt them or the caller numbers (public-key custody)"
        if tenant.key_custody == "public_key"
        else "stores the recordings and holds the keys, so it can decrypt them; every playback "
        "and export is audited with a reason"
    )
    out.append(
        {
            "name": "the processor (the contact centre operating this service)",
            "description": f"on the controller's instructions; {processor_can}",
        }
    )
    webhook = (
        f" (webhooks at {config.public_url}/twilio/…)" if config.public_url is not None else ""
    )
    out.append(
        {
            "name": "Twilio (telephony carrier)",
            "description": (
                f"carries the call and its audio to and from the service{webhook}: transport of "
                "the call, not storage by this service (it uses Twilio Media Streams, never "
                "Twilio's own recording). Twilio receives the caller's number and the audio as "
                "the carrier; its role and terms are for the controller to assess."
            ),
        }
    )
    if config.asterisk is not None:
        host = urlsplit(config.asterisk.url).hostname
        out.append(
            {
                "name": "Asterisk PBX",
                "description": (
                    f"the PBX reached through ARI at {host} (application {config.asterisk.app}) "
                    "answers calls and hands their audio to the service as RTP: transport of the "
                    "call, not storage by this service; whoever operates that PBX receives the "
                    "caller's number and the audio"
                ),
            }
        )
    return out


def _transfers(config: Config) -> str:
    carriers = "Twilio" + (" and the Asterisk PBX" if config.asterisk is not None else "")
    places = Places.of(config).named()
    return (
        "None by the service itself: recordings, caller numbers and call records stay in "
        f"{places} named in the annex. The telephony carriers carry the live call "
        f"({carriers}); Twilio Inc. is established in the United States, so whether its "
        "carriage of calls involves a transfer to a third country, and under which safeguard "
        "(Art. 44-49), is for the controller to assess with its carrier agreement."
    )


def _retention(lines: Sequence[Line]) -> dict[str, Any]:
    return {
        "per_line": {line.number: line.retention_days for line in lines},
        "rule": "days from the start of the recording, then erased automatically",
    }


def _backups(timing: dict[str, Any], sealed: Sequence[str]) -> str:
    """When an erased recording becomes unreadable in a backup of the catalog: when the key
    version that wrapped its data key is retired (docs/key-custody.md, tests/test_retirement.py)."""
    rotate, retire = timing["key_rotate_every_days"], timing["key_retire_after_days"]
    head = (
        "a backup of the catalog taken before an erasure still holds the recording's wrapped "
        "data key and, with the live keyring, opens it until the key version that wrapped it "
        "is retired (destroyed; ivr keys retire)"
    )
    if rotate is not None and retire is not None:
        when = (
            f": the service rotates each controller's local key every {rotate} day(s), "
            f"re-wrapping every kept recording under the new version, and retires a version "
            f"{retire} day(s) after its successor was made, so an erased recording is unreadable "
            f"in every backup at the latest {rotate + retire} day(s) (plus one sweep) after its "
            "erasure"
        )
    elif retire is not None:
        when = (
            f": the service retires a version {retire} day(s) after its successor was made; "
            "successors are made only by hand (ivr keys rotate --rewrap), so until then an "
            "erased recording stays readable in such a backup"
        )
    else:
        when = (
            ": no retirement schedule is configured ([keys] retire_after_days), so until an "
            "operator retires the version by hand an erased recording stays readable in such a "
            "backup"
        )
    text = (
        head
        + when
        + ". Keyring backups must be kept apart from data backups and only in their newest "
        "copy: an older keyring copy still holds retired versions"
    )
    if sealed:
        text += (
            f". For {_join(sealed)}, under public-key custody, the same holds for the "
            "controller's private key, which only the controller can destroy"
        )
    return text


def _erasure(timing: dict[str, Any], sealed: Sequence[str]) -> list[str]:
    hours = timing["retention_sweep_seconds"] / 3600
    return [
        "when a recording's retention period ends it is purged by crypto-shredding: its data "
        "key is destroyed in the live catalog, which makes the live audio undecryptable at "
        "once; the audio file is then deleted and a tombstone (id, controller, lawful basis, "
        "dates, reason) is kept",
        _backups(timing, sealed),
        f"the purge runs automatically every {hours:g} hour(s) inside the service and on demand "
        "(ivr retention sweep); recordings under a legal hold are kept until the hold is "
        "released",
        "erasure before the end of the period: per recording or per caller, on the "
        "controller's instruction (ivr recordings delete, ivr subject erase, the admin API)",
        f"call records: the caller's number (sealed, and its keyed hash) and the platform's call "
        f"id are removed by the same sweep {timing['call_record_days']} days after the call once "
        "nothing recorded of it is kept (at once for the caller by ivr subject erase, which "
        "lists the platform call ids so that the platform's own call log can be erased too); "
        "the times and outcome stay. The audit log is kept; it holds ids, not numbers",
    ]


def _controller(
    config: Config, tenant: Tenant, timing: dict[str, Any], now: datetime
) -> dict[str, Any]:
    lines = [line for line in config.lines.values() if line.tenant == tenant.id]
    groups: dict[tuple[str, LawfulBasis], list[Line]] = {}
    for line in lines:
        groups.setdefault((line.purpose, line.lawful_basis), []).append(line)
    activities = []
    for index, ((purpose, basis), group) in enumerate(groups.items(), start=1):
        activities.append(
            {
                "id": f"{tenant.id}-{index}",
                "purpose": purpose,
                "lawful_basis": _lawful_basis(group, basis, tenant),
                "lines": [
                    {
                        "number": line.number,
                        "policy_id": line.policy_id,
                        "policy_version": line.policy_version,
                        "consent_mode": line.consent_mode.value,
                        "language": line.language,
                        "forward_to": line.forward_to,
                        "recorded": _tracks(line),
                        "retention_days": line.retention_days,
                        "max_recording_seconds": line.max_recording_seconds,
                        "withdraw_key": line.withdraw_key if line.withdrawable else None,
                        "withdraw_via": {
                            name: line.withdraw_channel(PLATFORMS[name]).value
                            for name in line.platforms
                        },
                        "discard_on_withdraw": line.discard_on_withdraw,
                    }
                    for line in group
                ],
                "policies": _unique(f"{line.policy_id} v{line.policy_version}" for line in group),
                "consent_modes": _unique(line.consent_mode.value for line in group),
                "languages": _unique(line.language for line in group),
                "data_subjects": _data_subjects(group),
                "personal_data": _personal_data(group, config, tenant),
                "retention": _retention(group),
            }
        )
    return {
        "article": "Art. 30(1) GDPR",
        "tenant": tenant.id,
        "name": tenant.display_name,
        "dpo_contact": tenant.dpo_contact,
        "representative": "to be completed by the controller (Art. 30(1)(a): joint "
        "controllers, representative)",
        "key_custody": _custody(tenant),
        "activities": activities,
        "erasure": _erasure(timing, [tenant.id] if tenant.key_custody == "public_key" else []),
        "recipients": _recipients(config, tenant, now),
        "transfers": _transfers(config),
        "security_measures": (
            "See the annex: technical and organisational measures (Art. 32), generated from the "
            "same configuration."
        ),
    }


# --------------------------------------------------------------------------- Art. 30(2)


def _processor(config: Config, processor: ProcessorInfo) -> dict[str, Any]:
    tenants = list(config.tenants.values())
    local = [t.id for t in tenants if t.key_custody != "public_key"]
    sealed = [t.id for t in tenants if t.key_custody == "public_key"]
    platforms = "Twilio" + (" and Asterisk" if config.asterisk is not None else "")
    places = Places.of(config)
    custody = []
    if local:
        custody.append(f"holding the key-encryption keys of {_join(local)} (local custody)")
    if sealed:
        custody.append(
            f"sealing to the public keys of {_join(sealed)} without being able to decrypt "
            "(public-key custody)"
        )
    categories = [
        (
            "recording",
            f"answering calls to the controllers' lines over {platforms}, telling callers why "
            "the call may be recorded and on which basis, taking their keys as consent or "
            "objection, recording where the lawful condition holds, and forwarding callers to "
            "agents where a line says so",
        ),
        (
            "storage",
            "encrypted storage of recordings, caller numbers, call metadata and consent evidence "
            + (
                f"in the catalog database {places.catalog} and the data directory"
                if places.catalog is not None
                else "in the data directory"
            )
            + (
                ("," if places.catalog is not None else "")
                + f" and of the recordings' audio in the object store {config.blob_url}"
                if config.blob_url
                else ""
            ),
        ),
        (
            "retention",
            "purging recordings automatically at the end of their retention period; legal holds "
            "on the controller's instruction",
        ),
        ("erasure", "erasure per recording or per caller on the controller's instruction"),
        (
            "subject access export",
            "exporting everything held about one caller (Art. 15) on the controller's instruction",
        ),
        ("key custody", "; ".join(custody) or "no controller configured"),
        (
            "access for the controllers",
            "giving each controller's staff access to its own recordings through the admin API",
        ),
    ]
    return {
        "article": "Art. 30(2) GDPR",
        "name": processor.name,
        "contact": processor.contact,
        "placeholder": processor.placeholder,
        "representative_and_dpo": "to be completed by the processor (Art. 30(2)(a))",
        "controllers": [
            {
                "tenant": t.id,
                "name": t.display_name,
                "dpo_contact": t.dpo_contact,
                "lines": sum(1 for line in config.lines.values() if line.tenant == t.id),
                "key_custody": "public_key" if t.key_custody == "public_key" else "local",
            }
            for t in tenants
        ],
        "categories_of_processing": [{"name": n, "description": d} for n, d in categories],
        "transfers": (
            "None by the service: it stores everything in "
            + (
                "the data directory on the host named in the annex"
                if places.only_the_data_directory
                else f"{places.named()}, as named in the annex"
            )
            + f". The telephony carriers ({platforms}) carry the live calls; see each "
            "controller's record."
        ),
        "security_measures": "See the annex.",
    }


# --------------------------------------------------------------------------- annex (Art. 32)


def _annex(
    config: Config,
    data_dir: Path | None,
    timing: dict[str, Any],
    now: datetime,
    host: str,
) -> list[dict[str, Any]]:
    tenants = list(config.tenants.values())
    custody_rows = [{"tenant": t.id, "name": t.display_name, **_custody(t)} for t in tenants]
    sealed = [t.id for t in tenants if t.key_custody == "public_key"]
    local = [t.id for t in tenants if t.key_custody != "public_key"]
    encryption = [
        "Audio is encrypted while it is written: AES-256-GCM in a streaming container of "
        f"chunks of about {timing['chunk_interval_ms']} ms (STREAM construction), so no audio is "
        "ever on disk in clear (docs/recording-format.md).",
        "Every recording has its own random 256-bit data key; the data key is kept only "
        "wrapped, in the catalog, never in the audio file, whose header holds no personal data.",
    ]
    if local:
        encryption.append(
            f"Local custody for {_join(local)}: data keys and caller numbers are encrypted under "
            "the controller's own versioned key-encryption key (KEK, one per controller), and "
            "the KEKs are sealed under a master key the service takes from its environment "
            f"({MASTER_KEY_ENV}, to be provided from a secret store). Keys rotate with ivr keys "
            "rotate and old versions are destroyed with ivr keys retire"
            + (
                f"; the service rotates every {timing['key_rotate_every_days']} day(s)"
                if timing["key_rotate_every_days"] is not None
                else ""
            )
            + (
                f" and retires a version {timing['key_retire_after_days']} day(s) after its "
                "successor"
                if timing["key_retire_after_days"] is not None
                else ""
            )
            + "."
        )
    if sealed:
        encryption.append(
            f"Public-key custody for {_join(sealed)}: data keys and caller numbers are sealed to "
            "the controller's X25519 public key (ephemeral X25519, HKDF-SHA256, AES-256-GCM); "
            "the private key stays with the controller, so the service, its host and its "
            "backups cannot decrypt these recordings (docs/key-custody.md)."
        )
    if data_dir is not None and (data_dir / MASTER_KEY_FILE).exists():
        encryption.append(
            f"Observed: the data directory holds a generated {MASTER_KEY_FILE} (used when "
            f"{MASTER_KEY_ENV} is not set); a master key next to the data it protects does not "
            "protect a copy of the whole directory. Move it to a secret store for production."
        )

    roles_rows = []
    for t in tenants:
        counts: dict[str, int] = {}
        for token in config.api_tokens:
            if token.tenant == t.id and (token.expires is None or now < token.expires):
                counts[token.role] = counts.get(token.role, 0) + 1
        roles_rows.append({"tenant": t.id, "roles": dict(sorted(counts.items()))})
    rights = _api_role_rights()

    transit = [
        "Twilio webhooks are accepted only with a valid X-Twilio-Signature (the auth token is "
        f"read from the environment variable {config.twilio_auth_token_env}, never from the "
        "file); a media stream is admitted only with a token bound to its call and kind "
        f"(HMAC-SHA256, valid for {config.stream_token_ttl_seconds} s).",
    ]
    if config.public_url is None:
        transit.append(
            "No public_url is configured: the service derives its address from the request, "
            "which is right for local testing only."
        )
    elif config.public_url.startswith("https://"):
        transit.append(f"Twilio reaches the service over TLS at {config.public_url}.")
    else:
        transit.append(
            f"Warning: public_url {config.public_url} is not https; calls and audio would "
            "cross the network unencrypted."
        )
    if config.asterisk is not None:
        a = config.asterisk
        transit.append(
            f"Asterisk: ARI at {a.url} with a password from the environment variable "
            f"{a.password_env}; the call audio arrives as plain RTP (not SRTP) on "
            f"{a.rtp_bind} ports {a.rtp_port_min}-{a.rtp_port_max}: keep that path on a "
            "trusted network."
        )
        if a.url.startswith("http://"):
            transit.append(
                "ARI is reached over plain http: its password and call control cross the "
                "network in clear unless Asterisk runs on the same host or a trusted network."
            )

    where = str(data_dir.resolve()) if data_dir is not None else None
    blob_url = config.blob_url
    places = Places.of(config)
    blobs_here = (
        "and the recordings made before the object store below was configured in "
        "blobs/ (one encrypted file per recording)."
        if blob_url
        else "blobs/ (one encrypted file per recording)."
    )
    storage = (
        [
            (
                f"All recordings, keys and records are stored in the data directory {where} on "
                f"the host {host} (set with --data-dir or IVR_DATA_DIR; default ./var): "
                if places.only_the_data_directory
                else f"The data directory {where} on the host {host} (set with --data-dir or "
                "IVR_DATA_DIR; default ./var) holds "
            )
            + places.data_directory_holds(blobs_here),
            *places.database_sentences(),
            *(
                [
                    f"New recordings' audio is stored in the S3-compatible object store "
                    f"{blob_url} ([storage] blob_url; endpoint and credentials from the "
                    "environment), encrypted, as write-once segment objects whose names are "
                    "keyed hashes, with no personal data in their names or metadata "
                    "(docs/s3.md). Its operator, if not the processor itself, is a "
                    "sub-processor holding encrypted data only."
                ]
                if blob_url
                else []
            ),
            "The service sends no recording anywhere else"
            + (" than that object store" if blob_url else "")
            + ". Backups of "
            + (
                "this directory"
                if places.catalog is None and places.keyring is None
                else "this directory, the databases"
            )
            + ", the disks and the hosting provider are outside the service and must be "
            "described by the operator; the catalog and blobs (data) are to be backed up apart "
            f"from {places.keys} and the master key (keys), whose backups are kept only in "
            "their newest copy (docs/key-custody.md).",
        ]
        if where is not None
        else ["No data directory was given; the operator must state where the data is stored."]
    )

    sections: list[tuple[str, str, list[str], dict[str, Any]]] = [
        ("encryption_at_rest", "Encryption at rest", encryption, {"tenants": custody_rows}),
        (
            "integrity",
            "Integrity",
            [
                "Every chunk of audio is authenticated (AES-GCM with the header as associated "
                "data and counter nonces): an altered, dropped, duplicated, reordered or "
                "truncated chunk is detected when read, at a known index.",
                "The catalog keeps the SHA-256 of each finished audio file.",
                "The audit log is a keyed hash chain (each entry's link is an HMAC, with a key "
                "sealed under the master key, over the previous link and the entry): an edit "
                "cannot be covered up without the master key; the service publishes the "
                "chain's head outside the catalog (a heads file and the log) at start, on a "
                "schedule and at shutdown, and ivr audit verify checks the chain against every "
                "published head, so a cut-off tail is detected.",
            ],
            {},
        ),
        (
            "access_control",
            "Access control",
            [
                "Controllers' staff use the admin API with bearer tokens, each bound to one "
                "controller and one role, optionally with an expiry date; the configuration "
                "keeps only the SHA-256 of each token. A token never sees another controller's "
                "data (another controller's recording answers like one that does not exist).",
                "Role rights: "
                + "; ".join(f"{role}: {', '.join(r)}" for role, r in rights.items())
                + ".",
                "Every API request, including refused ones, and every playback, export, hold, "
                "release and erasure from the command line is in the audit log with its actor "
                "and reason.",
                "Command-line access on the host is the operator's: it must be limited to "
                "authorised staff by the host's own access control.",
            ],
            {"tenants": roles_rows},
        ),
        (
            "availability",
            "Availability and resilience",
            [
                (
                    f"Audio reaches the disk as each chunk of about {timing['chunk_interval_ms']} "
                    "ms is sealed; a process killed mid-call loses at most about that much, and "
                    "the next process to open the data directory recovers interrupted recordings "
                    "(marked incomplete, every sealed chunk kept)."
                )
                if not config.blob_url
                else (
                    "Audio reaches the object store in segments of about "
                    f"{DEFAULT_SEGMENT_CHUNKS} chunks of {timing['chunk_interval_ms']} ms each; a "
                    "process killed mid-call loses at most the segment being filled, and the next "
                    "process to open the vault recovers interrupted recordings (marked "
                    "incomplete, every stored segment kept)."
                ),
                f"Growing files are fsynced at most every {timing['fsync_interval_seconds']:g} s; "
                "a power cut may cost up to that much more audio.",
                places.catalog_availability(),
            ],
            {},
        ),
        (
            "storage_limitation",
            "Storage limitation",
            [
                "Each line has a retention period (see the controllers' records); a recording's "
                "retention date is set when it starts.",
                f"The service purges what has passed its date every "
                f"{timing['retention_sweep_seconds'] / 3600:g} hour(s); ivr retention sweep does "
                "the same on demand, and ivr retention report shows what is due when.",
                "Purging is crypto-shredding: the data key is destroyed in the live catalog, so "
                "the live audio becomes undecryptable at once. Legal holds suspend it.",
                _upper_first(_backups(timing, sealed)) + ".",
                *places.purge_leftovers(),
                f"Call records lose the caller's number (sealed, and its keyed hash) and the "
                f"platform's call id "
                f"{timing['call_record_days']} days after the call once nothing recorded of it "
                "is kept; per-caller erasure removes them at once.",
            ],
            {},
        ),
        (
            "data_minimisation",
            "Data minimisation",
            [
                "No audio is stored before the lawful condition holds (after the accept key, "
                "after a notice without objection, after a notice, or at once only where the "
                "line's basis is vital interests); the consent phase itself is not recorded.",
                "A withdrawal discards what was recorded where the line says so.",
                "Caller numbers are never written to logs; they are stored only encrypted, "
                "with a keyed hash for look-ups.",
                "Recordings stop at each line's max_recording_seconds.",
            ],
            {},
        ),
        (
            "data_subject_rights",
            "Data subject rights",
            [
                "Access (Art. 15): ivr subject export, or the DPO's API endpoint, produces one "
                "file with every recording of a caller, its metadata, consent evidence and "
                "access history, and a summary in the caller's language.",
                "Erasure (Art. 17) and objection (Art. 21): ivr subject erase or the API erase "
                "every recording of a caller and the caller fields and platform call ids of "
                "their calls (backups: see storage limitation); "
                "ivr recordings delete erases one recording.",
                "Withdrawal and objection during the call with one key, where the basis gives "
                "that right.",
                "Legal holds (ivr recordings hold/release, or the API) keep a recording out of "
                "erasure and retention while a claim requires it.",
            ],
            {},
        ),
        ("transit", "Security in transit", transit, {}),
        (
            "storage_location",
            "Storage location",
            storage,
            {"data_dir": where, "host": host},
        ),
        (
            "logging",
            "Logging",
            [
                "Service logs name calls by the platform's call id and recordings by their id, "
                "never by phone number; the audit log refers to a number only by a one-way tag.",
            ],
            {},
        ),
    ]
    commands = [f"ivr breach {c}" for c in BREACH_COMMANDS]
    sections.append(
        (
            "breach_handling",
            "Personal data breach handling",
            [
                "A breach register with the 72-hour deadline is available in this "
                f"installation ({', '.join(commands)}): it records when the breach became known, "
                "works out from the vault which recordings and how many callers each "
                "controller has affected, prepares the content of the notification to the "
                "supervisory authority (Art. 33(3)) and supports the decision on informing "
                "the callers (Art. 34).",
                "The processor informs each affected controller without undue delay "
                "(Art. 33(2)); notifying the supervisory authority is the controller's duty.",
            ],
            {"commands": commands},
        )
    )
    return [
        {"id": f"A.{i}", "key": key, "title": title, "measures": measures, **extra}
        for i, (key, title, measures, extra) in enumerate(sections, start=1)
    ]


# --------------------------------------------------------------------------- the document


def build_ropa(
    config: Config,
    *,
    tenant: str | None,
    data_dir: Path | None,
    now: datetime,
    processor: ProcessorInfo,
) -> dict[str, Any]:
    """The records of processing activities for ``config`` as a JSON-ready dict.

    ``tenant`` limits the Art. 30(1) part to one controller (UnknownTenant if there is none);
    the Art. 30(2) record and the annex then cover that controller only, saying how many others
    the processor acts for without naming them.
    """
    if tenant is not None and tenant not in config.tenants:
        known = ", ".join(sorted(config.tenants)) or "none"
        raise UnknownTenant(
            f"no tenant {tenant!r} in {config.source or 'the configuration'} (configured: {known})"
        )
    timing = _runtime_facts(config)
    host = socket.gethostname()
    source = str(config.source) if config.source is not None else None
    digest = file_sha256(config.source) if config.source is not None else None
    chosen = [config.tenants[tenant]] if tenant is not None else list(config.tenants.values())
    # A copy for one controller (an annex to its contract) must not reveal the processor's
    # other clients: the processor record and the annex then speak of that controller only.
    view = config if tenant is None else _only(config, tenant)

    warnings = []
    missing = [
        option
        for option, value, default in (
            ("--processor-name", processor.name, DEFAULT_PROCESSOR_NAME),
            ("--processor-contact", processor.contact, DEFAULT_PROCESSOR_CONTACT),
        )
        if value == default
    ]
    if missing:
        warnings.append(
            "The processor's name and contact are placeholders: fill them in "
            f"({', '.join(missing)}) before this document is used."
        )
    if config.demo:
        warnings.append("Generated from the embedded demo configuration, not a real one.")
    to_complete = [
        "the processor's name and contact details (Art. 30(2)(a))"
        if processor.placeholder
        else None,
        "the processor's representative and data protection officer, if any (Art. 30(2)(a))",
        "each controller's representative and joint controllers, if any (Art. 30(1)(a))",
        "sub-processors beyond the telephony carriers: the hosting provider of the host, "
        "backup storage, support contractors",
        "backups of the data directory: where, how long, who has access",
        "the controllers' own systems that receive exported recordings, and their retention",
        "organisational measures: staff access to the host, confidentiality, training, "
        "incident procedures",
    ]
    return {
        "document": "Records of processing activities (GDPR Art. 30)",
        "generated_at": _iso(now),
        "generator": f"ivr {__version__}",
        "config": {"source": source, "sha256": digest, "demo": config.demo},
        "storage": {
            "data_dir": str(data_dir.resolve()) if data_dir is not None else None,
            "host": host,
        },
        "scope": {"tenant": tenant},
        "warnings": warnings,
        "to_complete": [item for item in to_complete if item is not None],
        "controllers": [_controller(config, t, timing, now) for t in chosen],
        "processor": _processor(view, processor)
        | ({"other_controllers": len(config.tenants) - 1} if tenant is not None else {}),
        "annex": _annex(view, data_dir, timing, now, host),
    }


# --------------------------------------------------------------------------- Markdown


def _cell(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    text = "-" if value is None else str(value).replace("`", "'")
    return f"`{text}`"


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _bullets(items: Iterable[str]) -> list[str]:
    return [f"- {item}" for item in items]


def _only(config: Config, tenant: str) -> Config:
    return replace(
        config,
        tenants=MappingProxyType({tenant: config.tenants[tenant]}),
        lines=MappingProxyType({n: x for n, x in config.lines.items() if x.tenant == tenant}),
        api_tokens=tuple(t for t in config.api_tokens if t.tenant == tenant),
    )


def render_markdown(ropa: dict[str, Any]) -> str:
    """A readable document: header, one section per controller, the processor, the annex."""
    out: list[str] = [
        "# Records of processing activities (GDPR Art. 30)",
        "",
        "| | |",
        "|---|---|",
        f"| Generated | {ropa['generated_at']} by {_cell(ropa['generator'])} |",
        f"| Configuration | {_code(ropa['config']['source'])} |",
        f"| Configuration SHA-256 | {_code(ropa['config']['sha256'])} |",
        f"| Data directory | {_code(ropa['storage']['data_dir'])} on host "
        f"{_code(ropa['storage']['host'])} |",
        "| Scope | "
        + (
            f"Art. 30(1) record of controller {_code(ropa['scope']['tenant'])} only"
            if ropa["scope"]["tenant"]
            else "Art. 30(1) records of every controller"
        )
        + " |",
        "",
    ]
    for warning in ropa["warnings"]:
        out += [f"> **Warning:** {warning}", ""]
    out += ["**To be completed by the operator and the controllers:**", ""]
    out += [*_bullets(ropa["to_complete"]), ""]

    out += ["## Part 1. Records of the controllers (Art. 30(1))", ""]
    for n, c in enumerate(ropa["controllers"], start=1):
        out += _render_controller(n, c)

    p = ropa["processor"]
    out += [
        "## Part 2. Record of the processor (Art. 30(2))",
        "",
        "| | |",
        "|---|---|",
        f"| Processor | {_cell(p['name'])} |",
        f"| Contact | {_cell(p['contact'])} |",
        f"| Representative and DPO | {_cell(p['representative_and_dpo'])} |",
        "",
        "### Controllers on whose behalf the processor acts",
        "",
        "| Controller | Tenant | DPO | Lines | Key custody |",
        "|---|---|---|---|---|",
    ]
    for c in p["controllers"]:
        out.append(
            f"| {_cell(c['name'])} | {_code(c['tenant'])} | {_cell(c['dpo_contact'])} | "
            f"{c['lines']} | {_cell(c['key_custody'])} |"
        )
    if p.get("other_controllers"):
        out += [
            "",
            f"The processor also acts for {p['other_controllers']} other controller(s), not "
            "named in this copy.",
        ]
    out += ["", "### Categories of processing", ""]
    out += _bullets(
        f"**{_upper_first(c['name'])}:** {c['description']}" for c in p["categories_of_processing"]
    )
    out += [
        "",
        "### Transfers to third countries",
        "",
        p["transfers"],
        "",
        "### Technical and organisational measures",
        "",
        p["security_measures"],
        "",
        "## Annex. Technical and organisational measures (Art. 32)",
        "",
    ]
    for section in ropa["annex"]:
        out += [f"### {section['id']} {section['title']}", ""]
        out += _bullets(section["measures"])
        out.append("")
        if section["key"] == "encryption_at_rest":
            out += [
                "| Controller | Tenant | Key custody | Service can decrypt |",
                "|---|---|---|---|",
            ]
            for row in section["tenants"]:
                out.append(
                    f"| {_cell(row['name'])} | {_code(row['tenant'])} | "
                    f"{_cell(row['description'])} | "
                    f"{'yes' if row['service_can_decrypt'] else 'no'} |"
                )
            out.append("")
        elif section["key"] == "access_control":
            out += ["| Tenant | Active admin API tokens by role |", "|---|---|"]
            for row in section["tenants"]:
                roles = ", ".join(f"{r}: {k}" for r, k in row["roles"].items()) or "none"
                out.append(f"| {_code(row['tenant'])} | {roles} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _render_controller(n: int, c: dict[str, Any]) -> list[str]:
    custody = c["key_custody"]
    out = [
        f"### 1.{n} {c['name']} ({_code(c['tenant'])})",
        "",
        "| | |",
        "|---|---|",
        f"| Controller | {_cell(c['name'])} (tenant {_code(c['tenant'])}) |",
        f"| Data protection officer | {_cell(c['dpo_contact'])} |",
        f"| Representative, joint controllers | {_cell(c['representative'])} |",
        f"| Key custody | {_cell(custody['description'])} |",
        "",
    ]
    for m, a in enumerate(c["activities"], start=1):
        basis = a["lawful_basis"]
        out += [
            f"#### Activity 1.{n}.{m}: {a['purpose']}",
            "",
            f"**Purpose:** {a['purpose']}",
            "",
            f"**Lawful basis:** {basis['article']} GDPR, {basis['name']} "
            f"({_code(basis['value'])}).",
            "",
            "| Line | Policy | Consent mode | Language | Forwarded to | Recorded | "
            "Retention | Max length | Withdraw key |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for line in a["lines"]:
            withdraw = (
                "-"
                if line["withdraw_key"] is None
                else f"{_code(line['withdraw_key'])} "
                + ("(discards)" if line["discard_on_withdraw"] else "(keeps)")
            )
            out.append(
                f"| {_code(line['number'])} | {_code(line['policy_id'])} "
                f"v{line['policy_version']} | {line['consent_mode']} | {line['language']} | "
                f"{_cell(line['forward_to'] or 'not forwarded')} | {line['recorded']} | "
                f"{line['retention_days']} days | {line['max_recording_seconds']} s | "
                f"{withdraw} |"
            )
        out += ["", "**How the caller is told and decides:**", ""]
        out += _bullets(basis["how"])
        out += ["", basis["evidence"], ""]
        if basis["objection"]:
            out += [basis["objection"], ""]
        out += ["**Withdrawal:**", "", *_bullets(basis["withdrawal"]), ""]
        out += ["**Categories of data subjects:**", "", *_bullets(a["data_subjects"]), ""]
        out += ["**Categories of personal data:**", "", *_bullets(a["personal_data"]), ""]
        retention = a["retention"]
        out += ["**Retention (time limits for erasure):**", ""]
        out += _bullets(
            f"{_code(number)}: {days} {retention['rule']}"
            for number, days in retention["per_line"].items()
        )
        out.append("")
    out += ["#### Erasure (every activity of this controller)", ""]
    out += [*_bullets(c["erasure"]), ""]
    out += ["#### Recipients (every activity of this controller)", ""]
    out += _bullets(f"**{_upper_first(r['name'])}:** {r['description']}" for r in c["recipients"])
    out += [
        "",
        "#### Transfers to third countries",
        "",
        c["transfers"],
        "",
        "#### Technical and organisational measures",
        "",
        c["security_measures"],
        "",
    ]
    return out
