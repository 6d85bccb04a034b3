"""What a subject access export (Art. 15) says: everything held about one number, and why.

Theory of operation: :func:`gather` reads the vault once (the caller's call rows, their
recordings, the audit entries about them); :func:`build_report` is pure and turns that, the
configuration and the request into an :class:`AccessReport`. Everything the report says is a
:class:`Statement`: a ``kind`` (the sentence, written once per language in
:mod:`ivr.gdpr.access_text`), the GDPR provision it answers, and the ``facts`` it is made from.
A statement exists only when the data and the configuration make it true: the right to object
only for recordings on public task or legitimate interests, portability only for consent or
contract, an Asterisk recipient only for calls carried by Asterisk. What the configuration
cannot say (a controller or line it does not describe) becomes a ``gap.*`` statement instead of
a guess.

Recordings sealed to a controller's public key, with no matching private key at hand, are
"held, sealed": everything the catalog holds in clear (id, times, duration, lawful basis,
purpose, consent evidence, retention date) is reported, the audio is not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ivr.config import Config, Line, Tenant
from ivr.policy import ConsentMode, LawfulBasis
from storage.catalog import AuditEvent, RecordingRow, RecordingStatus
from storage.custody import is_x25519_ref
from storage.files import parse_utc, utc_iso
from storage.lifecycle import find_subject
from storage.sql import Row
from storage.vault import Vault

__all__ = [
    "AccessReport",
    "Audio",
    "CallEntry",
    "ControllerAccess",
    "Gathered",
    "Processor",
    "RecordingEntry",
    "Statement",
    "basis_article",
    "build_report",
    "gather",
]

# Recordings in these states still hold audio (or will): their call keeps the caller's number.
KEPT = frozenset({RecordingStatus.RECORDING, RecordingStatus.COMPLETE, RecordingStatus.INCOMPLETE})
READABLE = frozenset({RecordingStatus.COMPLETE, RecordingStatus.INCOMPLETE})
# Platforms that carry a live call to the service (ivr/platforms/*: PLATFORM); "import" is a
# recording brought in from a file (ivr/gdpr/recording_files.py).
TWILIO, ASTERISK, IMPORT = "twilio", "asterisk", "import"
# Lawful bases the rights in Art. 20 and 21 are tied to.
OBJECTION_BASES = frozenset({LawfulBasis.PUBLIC_TASK, LawfulBasis.LEGITIMATE_INTERESTS})
PORTABILITY_BASES = frozenset({LawfulBasis.CONSENT, LawfulBasis.CONTRACT})
ERASURE_LIMITED_BASES = frozenset({LawfulBasis.LEGAL_OBLIGATION, LawfulBasis.PUBLIC_TASK})
SUBJECT_ACTIONS = frozenset({"subject.exported", "subject.erased"})


def basis_article(basis: LawfulBasis) -> str:
    """The point of Art. 6(1) a basis is: LawfulBasis lists them in the Regulation's order,
    (a) to (f) (ivr.gdpr.ropa.BASIS_ARTICLES says the same, with the words)."""
    return f"Art. 6(1)({'abcdef'[list(LawfulBasis).index(basis)]})"


@dataclass(frozen=True, slots=True)
class Processor:
    """Who operates the service, as the operator names it; the configuration does not say."""

    name: str | None = None
    contact: str | None = None


class Audio(StrEnum):
    INCLUDED = "included"  # decrypted and in the export as WAV
    SEALED = "held_sealed"  # kept, sealed to the controller's public key: not in this export
    NONE = "none"  # no audio is kept (discarded, failed, still being recorded)


@dataclass(frozen=True, slots=True)
class Statement:
    """One thing the export tells the caller: a sentence ``kind`` made from ``facts`` only."""

    kind: str
    article: str
    facts: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.kind or not self.article:
            raise ValueError(f"a statement needs a kind and an article: {self!r}")
        object.__setattr__(self, "facts", MappingProxyType(dict(self.facts)))

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "article": self.article, "facts": dict(self.facts)}


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRecord:
    """A call row as the catalog holds it (the caller's number stays sealed there)."""

    id: str
    tenant: str
    platform: str
    platform_call_id: str | None  # the platform's own id (Twilio CallSid, ARI channel id)
    line: str | None  # the line's policy id
    started_at: str
    ended_at: str | None
    outcome: str | None
    end_reason: str | None

    @classmethod
    def of(cls, row: Row) -> CallRecord:
        """From a catalog call row: each field is the column of its name."""
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessEvent:
    at: str
    actor: str
    action: str
    target: str | None
    reason: str | None

    @classmethod
    def of(cls, event: AuditEvent) -> AccessEvent:
        reason = event.detail.get("reason")
        return cls(
            at=event.at,
            actor=event.actor,
            action=event.action,
            target=event.target,
            reason=str(reason) if reason is not None else None,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Gathered:
    """What the vault holds about one number, read once."""

    calls: tuple[CallRecord, ...]
    recordings: tuple[RecordingRow, ...]  # not erased; erased rows keep no call id anyway
    accesses: Mapping[str, tuple[AccessEvent, ...]]  # by recording id
    requests: tuple[AccessEvent, ...]  # earlier access and erasure requests about the number


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEntry:
    call: CallRecord
    line_numbers: tuple[str, ...]  # the configured numbers with the call's policy id
    recordings: tuple[str, ...]
    # When the retention sweep removes the number from the call row (None: no date, see why).
    number_removed_after: str | None
    number_kept_because: str  # call_record_days | recording_kept | legal_hold | no_date

    def as_dict(self) -> dict[str, Any]:
        c = self.call
        return {
            "call_id": c.id,
            "controller": c.tenant,
            "platform": c.platform,
            "platform_call_id": c.platform_call_id,
            "line_policy": c.line,
            "line_numbers": list(self.line_numbers),
            "started_at": c.started_at,
            "ended_at": c.ended_at,
            "outcome": c.outcome,
            "end_reason": c.end_reason,
            "recordings": list(self.recordings),
            "number_removed_after": self.number_removed_after,
            "number_kept_because": self.number_kept_because,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingEntry:
    row: RecordingRow
    audio: Audio
    audio_file: str | None  # its name in the zip
    access_log: tuple[AccessEvent, ...]

    def as_dict(self) -> dict[str, Any]:
        meta = self.row.public()
        meta["audio"] = self.audio.value
        meta["audio_file"] = self.audio_file
        meta["access_log"] = [e.as_dict() for e in self.access_log]
        return meta


@dataclass(frozen=True, slots=True, kw_only=True)
class ControllerAccess:
    tenant: str
    name: str
    dpo_contact: str | None  # None: the configuration does not describe this controller
    statements: tuple[Statement, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "name": self.name,
            "dpo_contact": self.dpo_contact,
            "statements": [s.as_dict() for s in self.statements],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessReport:
    phone: str
    generated_at: str
    language: str
    language_from: str  # requested | consent_evidence | line | default
    config_source: str | None
    controllers: tuple[ControllerAccess, ...]
    calls: tuple[CallEntry, ...]
    recordings: tuple[RecordingEntry, ...]
    requests: tuple[AccessEvent, ...]
    common: tuple[Statement, ...]  # source, automated decisions, complaint: for every controller

    @property
    def sealed(self) -> list[RecordingEntry]:
        return [r for r in self.recordings if r.audio is Audio.SEALED]

    @property
    def gaps(self) -> list[Statement]:
        every = [*self.common, *(s for c in self.controllers for s in c.statements)]
        return [s for s in every if s.kind.startswith("gap.")]

    def as_dict(self) -> dict[str, Any]:
        return {
            "phone": self.phone,
            "generated_at": self.generated_at,
            "language": self.language,
            "language_from": self.language_from,
            "configuration": self.config_source,
            "controllers": [c.as_dict() for c in self.controllers],
            "calls": [c.as_dict() for c in self.calls],
            "recordings": [r.as_dict() for r in self.recordings],
            "earlier_requests": [e.as_dict() for e in self.requests],
            "statements": [s.as_dict() for s in self.common],
        }


# --------------------------------------------------------------------------- reading the vault


def gather(vault: Vault, phone: str, tenants: Iterable[str], subject_tag: str) -> Gathered:
    """Every call row, recording and audit entry about ``phone`` (E.164) under ``tenants``.

    ``subject_tag`` is how the audit log names the number (``subject.subject_digest``)."""
    calls: list[CallRecord] = []
    recordings: list[RecordingRow] = []
    for group in find_subject(vault, phone, tenants):
        calls += [CallRecord.of(row) for row in vault.catalog.calls(group.calls)]
        recordings += [r for r in group.recordings if r.status is not RecordingStatus.ERASED]
    ids = {r.id for r in recordings}
    accesses: dict[str, list[AccessEvent]] = {rid: [] for rid in ids}
    requests: list[AccessEvent] = []
    for event in vault.catalog.audit_events():
        if event.target in ids:
            accesses[event.target].append(AccessEvent.of(event))
        elif event.action in SUBJECT_ACTIONS and event.detail.get("subject") == subject_tag:
            requests.append(AccessEvent.of(event))
    calls.sort(key=lambda c: (c.started_at, c.id))
    recordings.sort(key=lambda r: (r.started_at, r.id))
    return Gathered(
        calls=tuple(calls),
        recordings=tuple(recordings),
        accesses=MappingProxyType({k: tuple(v) for k, v in accesses.items()}),
        requests=tuple(requests),
    )


# --------------------------------------------------------------------------- the report


def build_report(
    gathered: Gathered,
    config: Config,
    *,
    phone: str,
    now: str,
    language: str | None,
    languages: Sequence[str],
    private_key_ref: str | None,
    processor: Processor,
) -> AccessReport:
    """The whole export's content; ``languages``: those the summary can be written in."""
    recordings = tuple(
        _recording_entry(row, gathered.accesses.get(row.id, ()), private_key_ref)
        for row in gathered.recordings
    )
    calls = tuple(_call_entry(call, gathered.recordings, config) for call in gathered.calls)
    lang, lang_from = _language(language, languages, gathered, config)
    tenants = sorted({c.tenant for c in gathered.calls} | {r.tenant for r in gathered.recordings})
    controllers = tuple(
        _controller(
            tenant,
            config,
            processor,
            [c for c in calls if c.call.tenant == tenant],
            [r for r in recordings if r.row.tenant == tenant],
        )
        for tenant in tenants
    )
    common = _common(calls, recordings, language, lang)
    return AccessReport(
        phone=phone,
        generated_at=now,
        language=lang,
        language_from=lang_from,
        config_source=str(config.source) if config.source is not None else None,
        controllers=controllers,
        calls=calls,
        recordings=recordings,
        requests=gathered.requests,
        common=common,
    )


def _recording_entry(
    row: RecordingRow, accesses: Sequence[AccessEvent], private_key_ref: str | None
) -> RecordingEntry:
    if row.status not in READABLE:
        audio = Audio.NONE
    elif is_x25519_ref(row.key_ref) and row.key_ref != private_key_ref:
        audio = Audio.SEALED
    else:
        audio = Audio.INCLUDED
    name = f"recordings/{row.id}.wav" if audio is Audio.INCLUDED else None
    return RecordingEntry(row=row, audio=audio, audio_file=name, access_log=tuple(accesses))


def _lines_of(config: Config, tenant: str, policy_id: str | None) -> list[Line]:
    if policy_id is None:
        return []
    return [
        line
        for line in config.lines.values()
        if line.tenant == tenant and line.policy_id == policy_id
    ]


def _call_entry(call: CallRecord, rows: Sequence[RecordingRow], config: Config) -> CallEntry:
    mine = [r for r in rows if r.call_id == call.id]
    kept = [r for r in mine if r.status in KEPT]
    base = parse_utc(call.started_at) + timedelta(days=config.call_record_days)
    after: str | None = utc_iso(base)
    because = "call_record_days"
    if any(r.legal_hold for r in kept):
        after, because = None, "legal_hold"
    elif any(r.retention_until is None or r.status is RecordingStatus.RECORDING for r in kept):
        after, because = None, "no_date"
    elif kept:
        last = max(parse_utc(r.retention_until or "") for r in kept)
        if last > base:
            after, because = utc_iso(last), "recording_kept"
    return CallEntry(
        call=call,
        line_numbers=tuple(line.number for line in _lines_of(config, call.tenant, call.line)),
        recordings=tuple(r.id for r in mine),
        number_removed_after=after,
        number_kept_because=because,
    )


def _language(
    requested: str | None, languages: Sequence[str], gathered: Gathered, config: Config
) -> tuple[str, str]:
    """The caller's language: asked for; else what the caller heard (the newest recording's
    consent evidence); else the language of the line they called; else the first one."""
    if requested:
        return (requested, "requested") if requested in languages else (languages[0], "default")
    for row in reversed(gathered.recordings):
        heard = (row.consent_evidence or {}).get("language")
        if heard in languages:
            return str(heard), "consent_evidence"
    for call in reversed(gathered.calls):
        for line in _lines_of(config, call.tenant, call.line):
            if line.language in languages:
                return line.language, "line"
    return languages[0], "default"


def _bases_of(
    tenant: str, config: Config, calls: Sequence[CallEntry], recordings: Sequence[RecordingEntry]
) -> dict[LawfulBasis, list[str]]:
    """Each lawful basis the controller processes this number under, with its purposes."""
    out: dict[LawfulBasis, list[str]] = {}
    for r in recordings:
        purposes = out.setdefault(LawfulBasis(r.row.lawful_basis), [])
        if r.row.purpose not in purposes:
            purposes.append(r.row.purpose)
    for c in calls:
        for line in _lines_of(config, tenant, c.call.line):
            purposes = out.setdefault(line.lawful_basis, [])
            if line.purpose not in purposes:
                purposes.append(line.purpose)
    return {b: out[b] for b in LawfulBasis if b in out}


def _controller(
    tenant_id: str,
    config: Config,
    processor: Processor,
    calls: Sequence[CallEntry],
    recordings: Sequence[RecordingEntry],
) -> ControllerAccess:
    tenant = config.tenants.get(tenant_id)
    said: list[Statement] = []
    if tenant is None:
        said.append(
            Statement(
                "gap.controller_not_configured",
                "Art. 15(1)",
                {"controller": tenant_id, "configuration": str(config.source)},
            )
        )
    policies = sorted({c.call.line for c in calls if c.call.line} | _policies(recordings))
    lines: list[Line] = []
    for policy in policies:
        found = _lines_of(config, tenant_id, policy)
        if tenant is not None and not found:
            said.append(Statement("gap.line_not_configured", "Art. 15(1)", {"line": policy}))
        lines += found
    bases = _bases_of(tenant_id, config, calls, recordings)
    said += _purposes(bases, calls)
    said += _categories(calls, recordings, tenant)
    said += _recipients(config, tenant, processor, calls)
    said += _retention(config, tenant, lines, calls, recordings)
    said += _rights(config, tenant, bases, lines, recordings)
    return ControllerAccess(
        tenant=tenant_id,
        name=tenant.display_name if tenant is not None else tenant_id,
        dpo_contact=tenant.dpo_contact if tenant is not None else None,
        statements=tuple(said),
    )


def _policies(recordings: Sequence[RecordingEntry]) -> set[str]:
    return {r.row.policy_id for r in recordings if r.row.policy_id}


# -- Art. 15(1)(a): purposes and their lawful bases


def _purposes(
    bases: Mapping[LawfulBasis, list[str]], calls: Sequence[CallEntry]
) -> list[Statement]:
    out = []
    for basis, purposes in bases.items():
        article = basis_article(basis)
        out.append(
            Statement(
                "purpose",
                "Art. 15(1)(a)",
                {"purposes": purposes, "lawful_basis": basis.value, "basis_article": article},
            )
        )
    if calls:
        out.append(Statement("purpose.call_record", "Art. 15(1)(a)", {"calls": len(calls)}))
    return out


# -- Art. 15(1)(b): categories of personal data, as far as this number's data hold them


def _categories(
    calls: Sequence[CallEntry], recordings: Sequence[RecordingEntry], tenant: Tenant | None
) -> list[Statement]:
    out = []
    if calls:
        custody = tenant.key_custody if tenant is not None else None
        out.append(
            Statement(
                "category.number",
                "Art. 15(1)(b)",
                {"calls": len(calls), "key_custody": custody},
            )
        )
        out.append(Statement("category.call_metadata", "Art. 15(1)(b)", {"calls": len(calls)}))
    voiced = [r for r in recordings if r.row.status in KEPT]
    if voiced:
        agent = [r.row.id for r in voiced if len(r.row.tracks) > 1 or "agent" in r.row.tracks]
        out.append(
            Statement(
                "category.voice",
                "Art. 15(1)(b)",
                {"recordings": len(voiced), "with_agent": len(agent)},
            )
        )
    evidence = [r for r in recordings if r.row.consent_evidence]
    if evidence:
        out.append(
            Statement("category.consent_evidence", "Art. 15(1)(b)", {"recordings": len(evidence)})
        )
    logged = sum(len(r.access_log) for r in recordings)
    if logged:
        out.append(Statement("category.access_log", "Art. 15(1)(b)", {"entries": logged}))
    return out


# -- Art. 15(1)(c) and 15(2): recipients, and transfers


def _recipients(
    config: Config, tenant: Tenant | None, processor: Processor, calls: Sequence[CallEntry]
) -> list[Statement]:
    out = []
    if tenant is not None:
        out.append(
            Statement(
                "recipient.controller",
                "Art. 15(1)(c)",
                {"name": tenant.display_name, "dpo_contact": tenant.dpo_contact},
            )
        )
    can_decrypt = None if tenant is None else tenant.key_custody != "public_key"
    kind = (
        "recipient.processor"
        if can_decrypt is None
        else "recipient.processor.keys"
        if can_decrypt
        else "recipient.processor.sealed"
    )
    out.append(
        Statement(kind, "Art. 15(1)(c)", {"name": processor.name, "contact": processor.contact})
    )
    by_platform: dict[str, int] = {}
    for c in calls:
        by_platform[c.call.platform] = by_platform.get(c.call.platform, 0) + 1
    for platform, count in sorted(by_platform.items()):
        if platform == TWILIO:
            out.append(Statement("recipient.twilio", "Art. 15(1)(c)", {"calls": count}))
            out.append(Statement("transfer.twilio", "Art. 15(2)", {"calls": count}))
        elif platform == ASTERISK:
            host = urlsplit(config.asterisk.url).hostname if config.asterisk is not None else None
            out.append(
                Statement("recipient.asterisk", "Art. 15(1)(c)", {"calls": count, "host": host})
            )
        elif platform != IMPORT:
            out.append(
                Statement(
                    "recipient.platform", "Art. 15(1)(c)", {"calls": count, "platform": platform}
                )
            )
    return out


# -- Art. 15(1)(d): how long, by which criteria


def _retention_source(config: Config, tenant: Tenant | None, line: Line) -> str:
    """Where a line's retention period comes from: the line, the controller or the default."""
    if tenant is not None and line.lawful_basis in tenant.retention_days:
        if line.retention_days == tenant.retention_days[line.lawful_basis]:
            return "controller"
        return "line"
    if line.retention_days == config.retention_default_days[line.lawful_basis]:
        return "default"
    return "line"


def _retention(
    config: Config,
    tenant: Tenant | None,
    lines: Sequence[Line],
    calls: Sequence[CallEntry],
    recordings: Sequence[RecordingEntry],
) -> list[Statement]:
    out = []
    seen: set[str] = set()
    for line in lines:
        if line.number in seen:
            continue
        seen.add(line.number)
        out.append(
            Statement(
                f"retention.line.{_retention_source(config, tenant, line)}",
                "Art. 15(1)(d)",
                {
                    "line": line.number,
                    "days": line.retention_days,
                    "lawful_basis": line.lawful_basis.value,
                    "sweep_minutes": config.retention_sweep_minutes,
                },
            )
        )
    for r in recordings:
        if r.row.retention_until is not None and r.row.status in KEPT:
            out.append(
                Statement(
                    "retention.recording",
                    "Art. 15(1)(d)",
                    {"recording": r.row.id, "until": r.row.retention_until},
                )
            )
        if r.row.legal_hold:
            out.append(
                Statement(
                    "retention.legal_hold",
                    "Art. 15(1)(d)",
                    {"recording": r.row.id, "reason": r.row.legal_hold_reason},
                )
            )
    if calls:
        out.append(
            Statement(
                "retention.call_record",
                "Art. 15(1)(d)",
                {
                    "days": config.call_record_days,
                    "sweep_minutes": config.retention_sweep_minutes,
                    "calls": len(calls),
                },
            )
        )
    if any(r.access_log for r in recordings):
        out.append(Statement("retention.access_log", "Art. 15(1)(d)", {}))
    return out


# -- Art. 15(1)(e), 7(3), 20, 21: rights, each only where its basis allows it


def _rights(
    config: Config,
    tenant: Tenant | None,
    bases: Mapping[LawfulBasis, list[str]],
    lines: Sequence[Line],
    recordings: Sequence[RecordingEntry],
) -> list[Statement]:
    contact = {"dpo_contact": tenant.dpo_contact if tenant is not None else None}
    out = [
        Statement("right.contact", "Art. 12(2)", contact),
        Statement("right.rectification", "Art. 16"),
        Statement("right.erasure", "Art. 17"),
        _backups(config, tenant),
    ]
    limited = [b.value for b in bases if b in ERASURE_LIMITED_BASES]
    if limited:
        out.append(Statement("right.erasure.limited", "Art. 17(3)(b)", {"lawful_bases": limited}))
    held = [r.row.id for r in recordings if r.row.legal_hold and r.row.status in KEPT]
    if held:
        out.append(Statement("right.erasure.legal_hold", "Art. 17(3)(e)", {"recordings": held}))
    out.append(Statement("right.restriction", "Art. 18"))
    objectable = [b.value for b in bases if b in OBJECTION_BASES]
    if objectable:
        # The objection key is heard during the notice, before any hand-off: every platform
        # delivers keys then. (Keys while recording are not promised here: on some platforms
        # they do not reach the service after the call is forwarded.)
        notice_lines = [
            line
            for line in lines
            if line.lawful_basis in OBJECTION_BASES and line.consent_mode is ConsentMode.OPT_OUT
        ]
        out.append(
            Statement(
                "right.objection",
                "Art. 21(1)",
                {
                    "lawful_bases": objectable,
                    "decline_keys": [
                        {"line": line.number, "key": line.decline_key} for line in notice_lines
                    ],
                },
            )
        )
    if LawfulBasis.CONSENT in bases:
        out.append(Statement("right.withdraw_consent", "Art. 7(3)"))
    portable = [
        r.row.id
        for r in recordings
        if LawfulBasis(r.row.lawful_basis) in PORTABILITY_BASES and r.audio is not Audio.NONE
    ]
    if portable:
        out.append(
            Statement(
                "right.portability",
                "Art. 20",
                {
                    "recordings": portable,
                    "lawful_bases": sorted(
                        {b.value for b in bases if b in PORTABILITY_BASES}, key=str
                    ),
                },
            )
        )
    return out


# -- Art. 15(1)(f)-(h) and what holds for every controller


def _backups(config: Config, tenant: Tenant | None) -> Statement:
    """When an erased recording becomes unreadable in a backup of the catalog: when the key
    version that wrapped its data key is retired (storage/retirement.py, the [keys] schedule);
    under public-key custody, when the controller destroys its private key."""
    if tenant is not None and tenant.key_custody == "public_key":
        return Statement("right.erasure.backups.sealed", "Art. 17")
    rotate, retire = config.key_rotate_every_days, config.key_retire_after_days
    if rotate is not None and retire is not None:
        return Statement(
            "right.erasure.backups.scheduled",
            "Art. 17",
            {"days": rotate + retire, "rotate_every_days": rotate, "retire_after_days": retire},
        )
    return Statement("right.erasure.backups.unscheduled", "Art. 17")


def _common(
    calls: Sequence[CallEntry],
    recordings: Sequence[RecordingEntry],
    requested: str | None,
    language: str,
) -> tuple[Statement, ...]:
    out = [Statement("complaint", "Art. 15(1)(f), 77")]
    platforms = sorted({c.call.platform for c in calls if c.call.platform != IMPORT})
    if platforms:
        kept = sum(1 for r in recordings if r.row.status in KEPT)
        out.append(
            Statement("source.call", "Art. 15(1)(g)", {"platforms": platforms, "recordings": kept})
        )
    imported = [
        r.row.id
        for r in recordings
        if any(c.call.platform == IMPORT and c.call.id == r.row.call_id for c in calls)
    ]
    if imported:
        out.append(Statement("source.import", "Art. 15(1)(g)", {"recordings": imported}))
    out.append(Statement("automated.none", "Art. 15(1)(h), 22"))
    if requested is not None and requested != language:
        out.append(
            Statement("gap.language", "Art. 12(1)", {"requested": requested, "used": language})
        )
    return tuple(out)
