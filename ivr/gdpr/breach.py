"""The breach register: the 72-hour duty of Art. 33 and the subject notice of Art. 34.

Opening a breach takes what is known (when the controller became aware, what happened, what is
in scope, what has been done so far) and works out, from the vault, what a supervisory
authority must be told: per controller (tenant), the recordings and call records in scope, the
number of data subjects behind them, the categories of data the scope exposes, and the
deadline (awareness + 72 h). It also decides, per controller, whether Art. 34(3)(a) spares the
callers a notice: it does when everything exposed was encrypted and no key that opens it is in
scope.

Every breach is registered, also one that turns out to touch nobody's data (Art. 33(5) asks
for all of them to be documented): its report then says that nobody's data is known to be
affected, and why.

Scopes (``--scope``):

- ``storage``: blobs leaked, keys not (a disk, a bucket, a backup of the blob store).
- ``key:TENANT:VERSION``: a tenant's key-encryption key version leaked (``key:acme:2``); with
  it, every recording wrapped and every caller number sealed under that version must be
  assumed readable.
- ``tenant:TENANT``: everything of one tenant, keys included.
- ``window:FROM/TO``: every call and recording that began between two times (UTC), keys
  included (e.g. the service itself was compromised in that period).
- ``recordings:ID,ID,…``: the listed recordings and their calls' records, keys included.

``--keys-safe`` states that, for a tenant/window/recordings scope, no key was exposed (only
ciphertext), which makes Art. 34(3)(a) apply. A tenant whose data keys are sealed to its own
public key (key custody ``public_key``) never has its key on the service, so only a key scope
naming that tenant's key could expose it.

What each scope exposes is one table, ``SCOPE_EXPOSES`` (docs/gdpr.md prints it, and a test
holds the two equal): a category is listed for a controller only when the scope exposes it and
the data in scope holds some of it.

Data subjects are counted from the catalog, not from the recordings alone: a call row keeps its
caller's number (sealed, and a keyed hash) for ``call_record_days`` (30 by default) even when
nothing was recorded, and
an imported recording carries a number when one was given. Callers are counted once per
controller by the keyed hash of their number; a recording whose caller is not known (a withheld
number, an import without one) counts as one more subject.

The measures taken are what the operator entered (``--measure`` when opening, ``ivr breach
measure`` later), each stored with when and by whom, and audited; the register proposes
further measures, and says so, but never claims one was taken.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ivr.config import Config
from storage.catalog import RecordingRow, RecordingStatus, UnknownRecording
from storage.files import parse_utc, utc_iso
from storage.sql import Connection, Row
from storage.vault import Vault

# The workflow's steps, as `ivr breach` offers them (the CLI builds one subcommand each; the
# Art. 30 annex names them).
COMMANDS = ("open", "list", "show", "measure", "report", "subjects", "close")
NOTIFY_WITHIN = timedelta(hours=72)
NEARLY_DUE = timedelta(hours=12)
LIVE = (RecordingStatus.COMPLETE, RecordingStatus.INCOMPLETE, RecordingStatus.RECORDING)
SCOPE_KINDS = ("storage", "key", "tenant", "window", "recordings")


class BreachError(ValueError):
    """What the operator asked cannot be registered as asked; nothing was written."""


@dataclass(frozen=True, slots=True)
class Scope:
    kind: str  # storage | key | tenant | window | recordings
    tenant: str | None = None
    key_version: int | None = None
    start: datetime | None = None
    end: datetime | None = None
    recording_ids: tuple[str, ...] = ()
    keys_safe: bool = False

    def describe(self) -> str:
        if self.kind == "storage":
            return "recording blobs exposed, keys not exposed"
        if self.kind == "key":
            return f"key-encryption key version {self.key_version} of tenant {self.tenant} exposed"
        if self.kind == "tenant":
            return f"all data of tenant {self.tenant}" + (" (no keys)" if self.keys_safe else "")
        if self.kind == "window":
            assert self.start and self.end
            return f"data recorded between {utc_iso(self.start)} and {utc_iso(self.end)}" + (
                " (no keys)" if self.keys_safe else ""
            )
        return f"{len(self.recording_ids)} listed recording(s)" + (
            " (no keys)" if self.keys_safe else ""
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tenant": self.tenant,
            "key_version": self.key_version,
            "start": utc_iso(self.start) if self.start else None,
            "end": utc_iso(self.end) if self.end else None,
            "recording_ids": list(self.recording_ids),
            "keys_safe": self.keys_safe,
            "description": self.describe(),
        }


def parse_scope(text: str, *, keys_safe: bool = False) -> Scope:
    kind, _, rest = text.strip().partition(":")
    if kind == "storage" and not rest:
        return Scope("storage", keys_safe=True)
    if kind == "key":
        tenant, _, version = rest.partition(":")
        version = version.removeprefix("local/")
        if not tenant or not version.isdigit():
            raise BreachError(f"scope {text!r}: expected key:TENANT:VERSION, e.g. key:acme:2")
        if keys_safe:
            raise BreachError("--keys-safe contradicts a key scope")
        return Scope("key", tenant=tenant, key_version=int(version))
    if kind == "tenant" and rest:
        return Scope("tenant", tenant=rest, keys_safe=keys_safe)
    if kind == "window":
        start_text, _, end_text = rest.partition("/")
        try:
            start, end = parse_utc(start_text), parse_utc(end_text)
        except ValueError:
            raise BreachError(
                f"scope {text!r}: expected window:FROM/TO in UTC, e.g. "
                "window:2026-11-01T00:00:00Z/2026-11-02T00:00:00Z"
            ) from None
        if end <= start:
            raise BreachError(f"scope {text!r}: the window ends before it starts")
        return Scope("window", start=start, end=end, keys_safe=keys_safe)
    if kind == "recordings" and rest:
        ids = tuple(x.strip() for x in rest.split(",") if x.strip())
        return Scope("recordings", recording_ids=ids, keys_safe=keys_safe)
    raise BreachError(
        f"unknown scope {text!r}: use storage, key:TENANT:VERSION, tenant:TENANT, "
        "window:FROM/TO or recordings:ID,ID"
    )


# -- what each scope exposes ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Category:
    """A category of personal data the service keeps, and where it keeps it."""

    key: str
    label: str  # short, for the scope table
    name: str  # in a report
    kept: str
    encrypted: bool  # stored only encrypted: readable only with a key


VOICE = Category(
    key="voice",
    label="voice recordings",
    name="voice recordings of calls (what callers and agents said)",
    kept="blob files, sealed with AES-256-GCM under a data key per recording",
    encrypted=True,
)
BLOB_HEADER = Category(
    key="blob_facts",
    label="recording facts in the blob files",
    name="per recording: its id, the controller's id, the audio format, and roughly how long "
    "and when it was made (file size and times)",
    kept="blob files, in clear: the header (docs/recording-format.md) and the file system",
    encrypted=False,
)
NUMBERS = Category(
    key="numbers",
    label="telephone numbers",
    name="callers' telephone numbers",
    kept="catalog call rows, sealed under the tenant's key (or to its public key), with a "
    "keyed hash to find a caller's calls; kept `call_record_days` (30 by default) after a "
    "call once nothing recorded of it is kept",
    encrypted=True,
)
CALL_RECORDS = Category(
    key="call_records",
    label="call records",
    name="call records (when each call began and ended, the line called, how it ended)",
    kept="catalog call rows, in clear",
    encrypted=False,
)
RECORDING_METADATA = Category(
    key="recording_metadata",
    label="recording metadata",
    name="recording metadata (lawful basis, purpose, times, duration, retention date)",
    kept="catalog recording rows, in clear",
    encrypted=False,
)
CONSENT = Category(
    key="consent_evidence",
    label="consent evidence",
    name="consent evidence (the prompt played, the key pressed and when, the decision)",
    kept="catalog recording rows, in clear",
    encrypted=False,
)
CATEGORIES = (VOICE, BLOB_HEADER, NUMBERS, CALL_RECORDS, RECORDING_METADATA, CONSENT)


@dataclass(frozen=True, slots=True, kw_only=True)
class Exposure:
    """One row of the scope table: whether a scope exposes a category, and why."""

    category: Category
    exposed: bool
    why: str


def _rows(**cells: tuple[bool, str]) -> tuple[Exposure, ...]:
    by_key = {c.key: c for c in CATEGORIES}
    return tuple(Exposure(category=by_key[k], exposed=e, why=w) for k, (e, w) in cells.items())


_IN_CATALOG = "kept only in the catalog (catalog.sqlite3), which is not in this scope"
_CLEAR_IN_CATALOG = (
    "kept in clear in the catalog: a key opens nothing there (if the catalog was exposed too, "
    "register a tenant or window scope)"
)
_EVERYTHING = "everything the service holds for the tenant is in scope"
_WINDOW = "kept for the calls and recordings that began in the window"
_LISTED = "kept for the listed recordings"
_THEIR_CALLS = "kept in the call rows of the listed recordings"

# scope kind -> every category, exposed or not, with the reason. Only the exposed ones can
# appear in a breach's assessment; docs/gdpr.md prints this table.
SCOPE_EXPOSES: dict[str, tuple[Exposure, ...]] = {
    "storage": _rows(
        voice=(
            True,
            "the blob files hold the audio, encrypted; the data keys are in the catalog "
            "and the keys wrapping them in the keyring, neither in this scope",
        ),
        blob_facts=(
            True,
            "the blob header is in clear, and a copied file keeps its size and often its times",
        ),
        numbers=(False, _IN_CATALOG),
        call_records=(False, _IN_CATALOG),
        recording_metadata=(False, _IN_CATALOG),
        consent_evidence=(False, _IN_CATALOG),
    ),
    "key": _rows(
        voice=(True, "the key unwraps the data keys of the recordings wrapped under that version"),
        blob_facts=(False, "not protected by a key; a key scope says nothing about the blob files"),
        numbers=(
            True,
            "caller numbers stored while that version was current are sealed under "
            "it, whether or not the call was recorded",
        ),
        call_records=(False, _CLEAR_IN_CATALOG),
        recording_metadata=(False, _CLEAR_IN_CATALOG),
        consent_evidence=(False, _CLEAR_IN_CATALOG),
    ),
    "tenant": _rows(
        voice=(True, _EVERYTHING),
        blob_facts=(True, _EVERYTHING),
        numbers=(True, _EVERYTHING + ", calls with no recording included"),
        call_records=(True, _EVERYTHING),
        recording_metadata=(True, _EVERYTHING),
        consent_evidence=(True, _EVERYTHING),
    ),
    "window": _rows(
        voice=(True, _WINDOW),
        blob_facts=(True, _WINDOW),
        numbers=(True, _WINDOW + ", calls with no recording included"),
        call_records=(True, _WINDOW),
        recording_metadata=(True, _WINDOW),
        consent_evidence=(True, _WINDOW),
    ),
    "recordings": _rows(
        voice=(True, _LISTED),
        blob_facts=(True, _LISTED),
        numbers=(True, _THEIR_CALLS),
        call_records=(True, _THEIR_CALLS),
        recording_metadata=(True, _LISTED),
        consent_evidence=(True, _LISTED),
    ),
}


SCOPE_SYNTAX = {
    "storage": "storage",
    "key": "key:TENANT:VERSION",
    "tenant": "tenant:TENANT",
    "window": "window:FROM/TO",
    "recordings": "recordings:ID,…",
}


def exposed_categories(kind: str) -> tuple[Exposure, ...]:
    return tuple(e for e in SCOPE_EXPOSES[kind] if e.exposed)


def _grouped(rows: Iterable[Exposure]) -> str:
    groups: dict[str, list[str]] = {}
    for e in rows:
        groups.setdefault(e.why, []).append(e.category.label)
    return "; ".join(f"{', '.join(labels)}: {why}" for why, labels in groups.items())


def scope_table_markdown() -> str:
    """CATEGORIES and SCOPE_EXPOSES as docs/gdpr.md prints them (a test holds them equal)."""
    lines = ["| category | what | where the service keeps it |", "|---|---|---|"]
    lines += [f"| {c.label} | {c.name} | {c.kept} |" for c in CATEGORIES]
    lines += ["", "| scope | exposes: why | does not expose: why |", "|---|---|---|"]
    for kind, rows in SCOPE_EXPOSES.items():
        yes = _grouped(e for e in rows if e.exposed)
        no = _grouped(e for e in rows if not e.exposed) or "(nothing)"
        lines.append(f"| `{SCOPE_SYNTAX[kind]}` | {yes} | {no} |")
    return "\n".join(lines)


# -- what is in scope -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class InScope:
    """What a scope reaches in the vault now: live recordings, the calls that hold a caller's
    number and the calls of those recordings, and the listed recordings no longer held."""

    recordings: tuple[RecordingRow, ...]
    calls: tuple[Row, ...]
    number_calls: frozenset[str]  # ids of the calls whose number the scope exposes
    gone: tuple[RecordingRow, ...] = ()  # listed recordings that are erased, discarded, failed


def _key_ref(version: int | None) -> str:
    return f"local/{version}"


def in_scope(vault: Vault, scope: Scope) -> InScope:
    """Everything of anyone's the scope may have exposed; erased data holds nothing."""
    rows = [r for r in vault.list() if r.status in LIVE]
    gone: list[RecordingRow] = []
    numbers: list[Row] = []
    if scope.kind == "key":
        ref = _key_ref(scope.key_version)
        rows = [r for r in rows if r.tenant == scope.tenant and r.key_ref == ref]
        numbers = vault.catalog.calls_with_caller(tenant=scope.tenant, caller_key_ref=ref)
    elif scope.kind == "tenant":
        rows = [r for r in rows if r.tenant == scope.tenant]
        numbers = vault.catalog.calls_with_caller(tenant=scope.tenant)
    elif scope.kind == "window":
        assert scope.start is not None and scope.end is not None  # parse_scope sets both
        start, end = utc_iso(scope.start), utc_iso(scope.end)
        rows = [r for r in rows if start <= r.started_at <= end]
        numbers = vault.catalog.calls_with_caller(started_from=start, started_to=end)
    elif scope.kind == "recordings":
        listed, unknown = [], []
        for rid in dict.fromkeys(scope.recording_ids):
            try:
                listed.append(vault.catalog.recording(rid))
            except UnknownRecording:
                unknown.append(rid)
        if unknown:
            raise BreachError(
                f"the vault never held recording(s) {', '.join(unknown)}: check the ids "
                "(erased recordings are still known by their id)"
            )
        rows = [r for r in listed if r.status in LIVE]
        gone = [r for r in listed if r.status not in LIVE]
        # A discarded recording's call row keeps its caller's number for a while (an erased
        # one's tombstone no longer names its call).
        of_listed = vault.catalog.calls(sorted({r.call_id for r in listed if r.call_id}))
        numbers = [c for c in of_listed if c["caller_hash"] or c["caller_sealed"]]
    # storage: every blob there is; the blob files hold no caller's number.
    calls = {c["id"]: c for c in numbers}
    for c in vault.catalog.calls(sorted({r.call_id for r in rows if r.call_id})):
        calls.setdefault(c["id"], c)
    number_calls = {c["id"] for c in numbers}
    if scope.kind in ("recordings", "tenant", "window"):  # their calls' rows are in scope too
        number_calls |= {i for i, c in calls.items() if c["caller_sealed"] is not None}
    return InScope(
        recordings=tuple(rows),
        calls=tuple(calls.values()),
        number_calls=frozenset(number_calls),
        gone=tuple(gone),
    )


def affected(vault: Vault, scope: Scope) -> list[RecordingRow]:
    """Recordings whose content the scope may have exposed (erased ones hold nothing)."""
    return list(in_scope(vault, scope).recordings)


def _exemption(scope: Scope, custody: str) -> tuple[bool, str]:
    """Art. 34(3)(a): encrypted, and no key that opens it in scope."""
    if scope.kind == "storage":
        return True, (
            "only encrypted blobs were exposed (AES-256-GCM, a key per recording); the keys "
            "that open them are kept in the catalog and keyring, which were not in scope"
        )
    if scope.kind == "key":
        return False, "a key that opens the affected recordings or caller numbers is in scope"
    if custody == "public_key":
        return True, (
            "this controller keeps the private key that opens its recordings and caller "
            "numbers; the service never held it, so everything the service holds for it is "
            "ciphertext to anyone else"
        )
    if scope.keys_safe:
        return True, "the operator states that no key was exposed, only encrypted data"
    return False, "the service's keys were in scope, so the content must be assumed readable"


def _categories(
    scope: Scope, recs: Sequence[RecordingRow], number_calls: int, calls: int, exempt: bool
) -> list[dict[str, str]]:
    """The categories the scope exposes of which this controller's data in scope holds some."""
    present = {
        VOICE.key: bool(recs),
        BLOB_HEADER.key: bool(recs),
        NUMBERS.key: number_calls > 0,
        CALL_RECORDS.key: calls > 0,
        RECORDING_METADATA.key: bool(recs),
        CONSENT.key: any(r.consent_evidence for r in recs),
    }
    out = []
    for e in exposed_categories(scope.kind):
        if not present[e.category.key]:
            continue
        name = e.category.name
        if e.category.encrypted and exempt:
            name += ", encrypted and unreadable without keys that were not exposed"
        out.append({"key": e.category.key, "name": name, "why": e.why})
    return out


def _nobody(vault: Vault, config: Config, scope: Scope, found: InScope) -> str:
    """Why a scope that reaches no one's data reaches no one."""
    if scope.kind == "storage":
        why = "the vault holds no recording, so the blob store held nobody's audio"
    elif scope.kind == "key":
        why = (
            f"no recording kept is wrapped, and no caller number kept is sealed, under key "
            f"version {scope.key_version} of tenant {scope.tenant}"
        )
    elif scope.kind == "tenant":
        why = (
            f"the vault holds no recording of tenant {scope.tenant} and no call of it that "
            "still carries a caller's number"
        )
        if scope.tenant not in config.tenants:
            why += f" (and {scope.tenant!r} is not a tenant in the configuration: check the name)"
    elif scope.kind == "window":
        why = "no recording, and no call that still carries a caller's number, began in the window"
    else:
        states = [
            f"{r.id} is {r.status.value}"
            + (f" since {r.erased_at}" if r.erased_at else "")
            + (f" ({r.status_reason})" if r.status_reason else "")
            for r in found.gone
        ]
        why = f"none of the listed recordings holds audio any more: {'; '.join(states)}"
    return (
        f"{why}. Only what the vault holds now is counted: data erased before the breach was "
        "registered no longer says whose it was"
    )


def assess(vault: Vault, config: Config, scope: Scope) -> dict[str, Any]:
    found = in_scope(vault, scope)
    tenants = sorted({r.tenant for r in found.recordings} | {c["tenant"] for c in found.calls})
    controllers = {}
    for tenant in tenants:
        recs = [r for r in found.recordings if r.tenant == tenant]
        calls = [c for c in found.calls if c["tenant"] == tenant]
        by_id = {c["id"]: c for c in calls}
        known = {c["caller_hash"] for c in calls if c["caller_hash"]}
        unknown = [
            r.id
            for r in recs
            if not (r.call_id and r.call_id in by_id and by_id[r.call_id]["caller_hash"])
        ]
        exposed_numbers = [c for c in calls if c["id"] in found.number_calls]
        recorded = {by_id[r.call_id]["caller_hash"] for r in recs if r.call_id in by_id}
        rows_exposed = any(e.category is CALL_RECORDS for e in exposed_categories(scope.kind))
        # What matters is how the data in scope is sealed, not today's setting.
        refs = [r.key_ref or "" for r in recs] + [c["caller_key_ref"] or "" for c in calls]
        sealed = bool(refs) and all(ref.startswith("x25519/") for ref in refs)
        custody = "public_key" if sealed else "local"
        exempt, why = _exemption(scope, custody)
        categories = _categories(scope, recs, len(exposed_numbers), len(calls), exempt)
        tenant_conf = config.tenants.get(tenant)
        controllers[tenant] = {
            "name": tenant_conf.display_name if tenant_conf else tenant,
            "dpo_contact": tenant_conf.dpo_contact if tenant_conf else None,
            "recordings": [r.id for r in recs],
            "calls": sorted(c["id"] for c in calls),
            "records": len(recs),
            "call_records": len(calls) if rows_exposed else 0,
            "numbers_exposed": len(exposed_numbers),
            "subjects": len(known) + len(unknown),
            "subjects_by_number": len(known),
            "subjects_without_recording": len(known - recorded),
            "subjects_unknown_number": len(unknown),
            "lawful_bases": sorted({r.lawful_basis for r in recs}),
            "categories": [c["name"] for c in categories],
            "category_reasons": categories,
            "key_custody": custody,
            "art34_3a_applies": exempt,
            "art34_reason": why,
        }
    return {
        "controllers": controllers,
        "records": len(found.recordings),
        "call_records": len(found.calls),
        "subjects": sum(c["subjects"] for c in controllers.values()),
        "nobody_affected": None if controllers else _nobody(vault, config, scope, found),
    }


def _clean_measures(measures: Iterable[str]) -> list[str]:
    texts = [m.strip() for m in measures]
    if any(not t for t in texts):
        raise BreachError("a measure needs words: an empty --measure was given")
    return texts


def _new_id() -> str:
    return "brc_" + secrets.token_hex(6)


def open_breach(
    vault: Vault,
    config: Config,
    *,
    detected_at: datetime,
    description: str,
    scope: Scope,
    actor: str,
    measures: Sequence[str] = (),
) -> dict[str, Any]:
    """Register a breach, whatever it reaches; ``measures`` are those already taken."""
    now = vault.clock()
    if detected_at > now + timedelta(minutes=5):
        raise BreachError(
            f"the detection time {utc_iso(detected_at)} is in the future (now {utc_iso(now)})"
        )
    if not description.strip():
        raise BreachError("a breach needs a description of what happened")
    texts = _clean_measures(measures)
    assessment = assess(vault, config, scope)
    breach_id = _new_id()
    deadline = detected_at + NOTIFY_WITHIN
    with vault.catalog.transaction() as db:
        db.execute(
            "INSERT INTO breaches (id, detected_at, opened_at, deadline, description, scope,"
            " assessment, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'open')",
            (
                breach_id,
                utc_iso(detected_at),
                utc_iso(now),
                utc_iso(deadline),
                description,
                json.dumps(scope.to_json()),
                json.dumps(assessment),
            ),
        )
        vault.catalog.audit(
            db,
            actor=actor,
            action="breach.opened",
            target=breach_id,
            detail={
                "scope": scope.describe(),
                "records": assessment["records"],
                "subjects": assessment["subjects"],
                "controllers": sorted(assessment["controllers"]),
                "deadline": utc_iso(deadline),
                "nobody_affected": assessment["nobody_affected"] is not None,
            },
        )
        for text in texts:
            _insert_measure(vault, db, breach_id, text, actor)
    return get(vault, breach_id)


def _insert_measure(vault: Vault, db: Connection, breach_id: str, text: str, actor: str) -> None:
    db.execute(
        "INSERT INTO breach_measures (breach_id, at, actor, text) VALUES (?, ?, ?, ?)",
        (breach_id, utc_iso(vault.clock()), actor, text),
    )
    vault.catalog.audit(
        db, actor=actor, action="breach.measure_added", target=breach_id, detail={"measure": text}
    )


def add_measures(
    vault: Vault, breach_id: str, measures: Sequence[str], *, actor: str
) -> dict[str, Any]:
    """Record measures taken about a breach (open or closed: what was done after closing it
    belongs in the record too). Each is stored with when and by whom, and audited."""
    get(vault, breach_id)
    texts = _clean_measures(measures)
    if not texts:
        raise BreachError(f"no measure given for breach {breach_id}")
    with vault.catalog.transaction() as db:
        for text in texts:
            _insert_measure(vault, db, breach_id, text, actor)
    return get(vault, breach_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class Measure:
    """A measure taken, as the operator entered it."""

    at: str
    actor: str
    text: str

    def to_json(self) -> dict[str, str]:
        return {"at": self.at, "actor": self.actor, "text": self.text}


def measures_of(vault: Vault, breach_id: str) -> list[Measure]:
    return [
        Measure(at=m["at"], actor=m["actor"], text=m["text"])
        for m in vault.catalog.breach_measures(breach_id)
    ]


def get(vault: Vault, breach_id: str) -> dict[str, Any]:
    row = vault.catalog.breach(breach_id)
    if row is None:
        raise BreachError(f"no breach with id {breach_id!r}")
    return _as_dict(row, measures_of(vault, breach_id))


def _as_dict(row: Any, measures: Sequence[Measure]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "detected_at": row["detected_at"],
        "opened_at": row["opened_at"],
        "deadline": row["deadline"],
        "description": row["description"],
        "scope": json.loads(row["scope"]),
        "assessment": json.loads(row["assessment"]),
        "measures": [m.to_json() for m in measures],
        "status": row["status"],
        "closed_at": row["closed_at"],
        "summary": row["summary"],
    }


def all_breaches(vault: Vault) -> list[dict[str, Any]]:
    return [_as_dict(r, measures_of(vault, r["id"])) for r in vault.catalog.breaches()]


def time_left(breach: dict[str, Any], now: datetime) -> timedelta:
    return parse_utc(breach["deadline"]) - now


def urgency(breach: dict[str, Any], now: datetime) -> str:
    if breach["status"] == "closed":
        return "closed"
    left = time_left(breach, now)
    if left <= timedelta(0):
        return "overdue"
    if left <= NEARLY_DUE:
        return "nearly due"
    return "open"


def close(vault: Vault, breach_id: str, *, summary: str, actor: str) -> dict[str, Any]:
    breach = get(vault, breach_id)
    if breach["status"] == "closed":
        raise BreachError(f"breach {breach_id} was already closed at {breach['closed_at']}")
    if not summary.strip():
        raise BreachError("closing a breach needs a summary of what was done")
    now = utc_iso(vault.clock())
    with vault.catalog.transaction() as db:
        changed = db.execute(
            "UPDATE breaches SET status = 'closed', closed_at = ?, summary = ?"
            " WHERE id = ? AND status = 'open'",
            (now, summary, breach_id),
        ).rowcount
        if not changed:
            raise BreachError(f"breach {breach_id} was closed meanwhile")
        vault.catalog.audit(
            db, actor=actor, action="breach.closed", target=breach_id, detail={"summary": summary}
        )
    return get(vault, breach_id)


def subjects_to_notify(
    vault: Vault, breach_id: str, *, actor: str, reason: str, private_key: Any = None
) -> dict[str, list[str]]:
    """The numbers of the callers who must be told (Art. 34), per controller, from every call
    in scope (recorded or not). Audited."""
    breach = get(vault, breach_id)
    out: dict[str, list[str]] = {}
    for tenant, c in breach["assessment"]["controllers"].items():
        if c["art34_3a_applies"]:
            continue
        call_ids = set(c.get("calls", ()))
        if "calls" not in c:  # assessed before call rows were counted: the recordings' calls
            for rid in c["recordings"]:
                try:
                    call_id = vault.catalog.recording(rid).call_id
                except UnknownRecording:
                    continue
                if call_id:
                    call_ids.add(call_id)
        kwargs = {"private_key": private_key} if private_key is not None else {}
        numbers = set()
        for call_id in sorted(call_ids):
            number = vault.caller_of(call_id, **kwargs)
            if number:
                numbers.add(number)
        out[tenant] = sorted(numbers)
    vault.audit(
        actor=actor,
        action="breach.subjects_exported",
        target=breach_id,
        detail={"reason": reason, "counts": {t: len(n) for t, n in out.items()}},
    )
    return out


# -- the Art. 33(3) report ------------------------------------------------------------------------
NO_MEASURES = "None entered in the register: no measure taken is on record for this breach."


def _proposed(breach: dict[str, Any], tenant: str, c: dict[str, Any]) -> list[str]:
    """What the register suggests from the scope; proposals only, never claimed as done."""
    out = []
    if breach["scope"]["kind"] == "key":
        out.append(
            f"Rotate the tenant's keys and re-wrap every data key under the new version "
            f"(`ivr keys rotate --tenant {tenant} --rewrap`); the exposed version then "
            "opens no recording still kept."
        )
    if not c["art34_3a_applies"]:
        out.append(
            "Tell the affected callers without undue delay (Art. 34); their numbers come "
            f"from `ivr breach subjects {breach['id']}`."
        )
    if c["records"]:
        out.append("Consider erasing recordings no longer needed (`ivr recordings delete`).")
    return out


def _consequences(c: dict[str, Any]) -> list[str]:
    if c["art34_3a_applies"]:
        return [
            "None expected for the callers: the exposed data is encrypted and unreadable "
            "without keys that were not exposed (Art. 34(3)(a))."
        ]
    keys = {x["key"] for x in c.get("category_reasons", ())} or {VOICE.key, NUMBERS.key}
    out = []
    if VOICE.key in keys:
        out += [
            "Callers' voices and what they said in the calls may be listened to by others.",
            "Risk of embarrassment, fraud or social engineering based on call content.",
        ]
    if NUMBERS.key in keys:
        out.append("Telephone numbers may be used to contact the callers or linked to them.")
    if CALL_RECORDS.key in keys:
        out.append("Others may learn when the callers called which line.")
    if CONSENT.key in keys and VOICE.key not in keys:
        out.append("Others may learn that a caller agreed to or refused recording.")
    return out


def _taken(breach: dict[str, Any]) -> list[dict[str, str]]:
    return list(breach.get("measures", ()))


def report(breach: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Per controller, what Art. 33(3) requires a notification to contain; for a breach that
    reaches nobody's data, why (the Art. 33(5) record)."""
    scope = breach["scope"]
    assessment = breach["assessment"]
    nature = f"{breach['description']} Scope: {scope['description']}."
    hours_left = round(time_left(breach, now).total_seconds() / 3600, 1)
    taken = _taken(breach)
    controllers = {}
    for tenant, c in assessment["controllers"].items():
        controllers[tenant] = {
            "controller": c["name"],
            "dpo_contact": c["dpo_contact"],
            "nature": nature,
            "detected_at": breach["detected_at"],
            "deadline": breach["deadline"],
            "time_left_hours": hours_left,
            "categories_of_data": c["categories"],
            "category_reasons": c.get("category_reasons", []),
            "approximate_subjects": c["subjects"],
            "subjects_by_number": c.get("subjects_by_number", c["subjects"]),
            "subjects_without_recording": c.get("subjects_without_recording", 0),
            "subjects_unknown_number": c.get("subjects_unknown_number", 0),
            "approximate_records": c["records"],
            "call_records": c.get("call_records", 0),
            "lawful_bases": c["lawful_bases"],
            "likely_consequences": _consequences(c),
            "measures_taken": taken,
            "measures_proposed": _proposed(breach, tenant, c),
            "art34_3a_applies": c["art34_3a_applies"],
            "art34_reason": c["art34_reason"],
            "subjects_must_be_told": not c["art34_3a_applies"],
        }
    return {
        "breach": breach["id"],
        "status": breach["status"],
        "nature": nature,
        "detected_at": breach["detected_at"],
        "deadline": breach["deadline"],
        "time_left_hours": hours_left,
        "nobody_affected": assessment.get("nobody_affected"),
        "measures_taken": taken,
        "controllers": controllers,
    }


def _measure_lines(taken: Sequence[dict[str, str]]) -> list[str]:
    if not taken:
        return [f"  - {NO_MEASURES}"]
    return [f"  - {m['text']} (entered {m['at']} by {m['actor']})" for m in taken]


def _subject_line(c: dict[str, Any]) -> str:
    parts = [f"{c['subjects_by_number']} known by their telephone number"]
    if c["subjects_without_recording"]:
        parts[0] += f", {c['subjects_without_recording']} of them only from calls not recorded"
    if c["subjects_unknown_number"]:
        parts.append(
            f"{c['subjects_unknown_number']} recording(s) of a caller whose number is not "
            "known, each counted as one"
        )
    records = f"{c['approximate_records']} recording(s)"
    if c["call_records"]:
        records += f", {c['call_records']} call record(s)"
    return (
        f"- **Approximate number of data subjects:** {c['approximate_subjects']} "
        f"({'; '.join(parts)}); records: {records}."
    )


def render_markdown(rep: dict[str, Any]) -> str:
    lines = [f"# Personal data breach {rep['breach']} ({rep['status']})", ""]
    if rep.get("nobody_affected"):
        lines += [
            "## Nobody's data is known to be affected",
            "",
            "Documented under GDPR Art. 33(5).",
            "",
            f"- **Nature of the breach:** {rep['nature']}",
            f"- **Became aware:** {rep['detected_at']} (72 hours run to {rep['deadline']}).",
            f"- **Why nobody's data is known to be affected:** {rep['nobody_affected']}.",
            "- **Measures taken:**",
            *_measure_lines(rep["measures_taken"]),
            "",
        ]
        return "\n".join(lines)
    for tenant, c in rep["controllers"].items():
        lines += [
            f"## Notification for {c['controller']} ({tenant})",
            "",
            "Content required by GDPR Art. 33(3).",
            "",
            f"- **Nature of the breach:** {c['nature']}",
            f"- **Became aware:** {c['detected_at']}; notify the supervisory authority by "
            f"{c['deadline']} ({c['time_left_hours']} h left).",
            "- **Categories of data:**",
            *[f"  - {x['name']}: {x['why']}" for x in c["category_reasons"]],
            *([f"  - {x}" for x in c["categories_of_data"]] if not c["category_reasons"] else []),
            _subject_line(c),
            f"- **Lawful bases of the processing:** {', '.join(c['lawful_bases']) or '(none)'}.",
            f"- **Data protection officer:** {c['dpo_contact'] or '(not configured)'}",
            "- **Likely consequences:**",
            *[f"  - {x}" for x in c["likely_consequences"]],
            "- **Measures taken:**",
            *_measure_lines(c["measures_taken"]),
            "- **Measures proposed:**",
            *([f"  - {x}" for x in c["measures_proposed"]] or ["  - none"]),
            "- **Notice to the callers (Art. 34):** "
            + ("not required, Art. 34(3)(a): " if c["art34_3a_applies"] else "required: ")
            + c["art34_reason"]
            + ".",
            "",
        ]
    return "\n".join(lines)
