"""The breach register: the 72-hour duty of Art. 33 and the subject notice of Art. 34.

Opening a breach takes what is known (when the controller became aware, what happened, what is
in scope) and works out, from the vault, what a supervisory authority must be told: the
recordings affected, per controller (tenant), the number of distinct callers behind them, the
categories of data, and the deadline (awareness + 72 h). It also decides, per controller, whether
Art. 34(3)(a) spares the callers a notice: it does when everything exposed was encrypted and no
key that opens it is in scope.

Scopes (``--scope``):

- ``storage``: blobs leaked, keys not (a disk, a bucket, a backup of the blob store).
- ``key:TENANT:VERSION``: a tenant's key-encryption key version leaked (``key:acme:2``); with
  it, every recording wrapped under that version must be assumed readable.
- ``tenant:TENANT``: everything of one tenant, keys included.
- ``window:FROM/TO``: everything recorded between two times (UTC), keys included (e.g. the
  service itself was compromised in that period).
- ``recordings:ID,ID,…``: the listed recordings, keys included.

``--keys-safe`` states that, for a tenant/window/recordings scope, no key was exposed (only
ciphertext), which makes Art. 34(3)(a) apply. A tenant whose data keys are sealed to its own
public key (key custody ``public_key``) never has its key on the service, so only a key scope
naming that tenant's key could expose it.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ivr.config import Config
from storage.catalog import RecordingRow, RecordingStatus
from storage.files import parse_utc, utc_iso
from storage.vault import Vault

# The workflow's steps, as `ivr breach` offers them (the CLI builds one subcommand each; the
# Art. 30 annex names them).
COMMANDS = ("open", "list", "show", "report", "subjects", "close")
NOTIFY_WITHIN = timedelta(hours=72)
NEARLY_DUE = timedelta(hours=12)
LIVE = (RecordingStatus.COMPLETE, RecordingStatus.INCOMPLETE, RecordingStatus.RECORDING)


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


def affected(vault: Vault, scope: Scope) -> list[RecordingRow]:
    """Recordings whose content the scope may have exposed (erased ones hold nothing)."""
    rows = [r for r in vault.list() if r.status in LIVE]
    if scope.kind == "key":
        ref = f"local/{scope.key_version}"
        return [r for r in rows if r.tenant == scope.tenant and r.key_ref == ref]
    if scope.kind == "tenant":
        return [r for r in rows if r.tenant == scope.tenant]
    if scope.kind == "window":
        assert scope.start is not None and scope.end is not None  # parse_scope sets both
        start, end = utc_iso(scope.start), utc_iso(scope.end)
        return [r for r in rows if start <= r.started_at <= end]
    if scope.kind == "recordings":
        wanted = set(scope.recording_ids)
        found = [r for r in rows if r.id in wanted]
        missing = wanted - {r.id for r in found}
        if missing:
            raise BreachError(f"no such live recording(s): {', '.join(sorted(missing))}")
        return found
    return rows  # storage: every blob there is


def _exemption(scope: Scope, custody: str) -> tuple[bool, str]:
    """Art. 34(3)(a): encrypted, and no key that opens it in scope."""
    if scope.kind == "storage":
        return True, (
            "only encrypted blobs were exposed (AES-256-GCM, a key per recording); the keys "
            "that open them are kept in the catalog and keyring, which were not in scope"
        )
    if scope.kind == "key":
        return False, "a key that opens the affected recordings is in scope"
    if custody == "public_key":
        return True, (
            "this controller keeps the private key that opens its recordings; the service never "
            "held it, so everything the service holds for it is ciphertext to anyone else"
        )
    if scope.keys_safe:
        return True, "the operator states that no key was exposed, only encrypted data"
    return False, "the service's keys were in scope, so the content must be assumed readable"


def assess(vault: Vault, config: Config, scope: Scope) -> dict[str, Any]:
    rows = affected(vault, scope)
    if not rows:
        raise BreachError(f"the scope ({scope.describe()}) matches no recording: nothing to report")
    per_tenant: dict[str, list[RecordingRow]] = {}
    for row in rows:
        per_tenant.setdefault(row.tenant, []).append(row)
    controllers = {}
    for tenant, recs in sorted(per_tenant.items()):
        call_ids = sorted({r.call_id for r in recs if r.call_id})
        calls = vault.catalog.calls(call_ids)
        subjects = {c["caller_hash"] for c in calls if c["caller_hash"]}
        # What matters is how the affected recordings' keys are held, not today's setting.
        sealed = all((r.key_ref or "").startswith("x25519/") for r in recs)
        custody = "public_key" if sealed else "local"
        exempt, why = _exemption(scope, custody)
        categories = ["voice recordings of calls"]
        if subjects:
            categories.append("callers' telephone numbers")
        categories.append("call metadata (times, duration, line)")
        if any(r.consent_evidence for r in recs):
            categories.append("consent evidence (keys pressed and when)")
        tenant_conf = config.tenants.get(tenant)
        controllers[tenant] = {
            "name": tenant_conf.display_name if tenant_conf else tenant,
            "dpo_contact": tenant_conf.dpo_contact if tenant_conf else None,
            "recordings": [r.id for r in recs],
            "records": len(recs),
            "subjects": len(subjects),
            "subjects_unknown_number": sum(1 for r in recs if not r.call_id),
            "lawful_bases": sorted({r.lawful_basis for r in recs}),
            "categories": categories,
            "key_custody": custody,
            "art34_3a_applies": exempt,
            "art34_reason": why,
        }
    return {"controllers": controllers, "records": len(rows)}


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
) -> dict[str, Any]:
    now = vault.clock()
    if detected_at > now + timedelta(minutes=5):
        raise BreachError(
            f"the detection time {utc_iso(detected_at)} is in the future (now {utc_iso(now)})"
        )
    if not description.strip():
        raise BreachError("a breach needs a description of what happened")
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
                "controllers": sorted(assessment["controllers"]),
                "deadline": utc_iso(deadline),
            },
        )
    return get(vault, breach_id)


def get(vault: Vault, breach_id: str) -> dict[str, Any]:
    row = vault.catalog.breach(breach_id)
    if row is None:
        raise BreachError(f"no breach with id {breach_id!r}")
    return _as_dict(row)


def _as_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "detected_at": row["detected_at"],
        "opened_at": row["opened_at"],
        "deadline": row["deadline"],
        "description": row["description"],
        "scope": json.loads(row["scope"]),
        "assessment": json.loads(row["assessment"]),
        "status": row["status"],
        "closed_at": row["closed_at"],
        "summary": row["summary"],
    }


def all_breaches(vault: Vault) -> list[dict[str, Any]]:
    return [_as_dict(r) for r in vault.catalog.breaches()]


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
    """The numbers of the callers who must be told (Art. 34), per controller. Audited."""
    breach = get(vault, breach_id)
    out: dict[str, list[str]] = {}
    for tenant, c in breach["assessment"]["controllers"].items():
        if c["art34_3a_applies"]:
            continue
        numbers = set()
        for rid in c["recordings"]:
            try:
                row = vault.get(rid)
            except Exception:
                continue
            if row.call_id:
                kwargs = {"private_key": private_key} if private_key is not None else {}
                number = vault.caller_of(row.call_id, **kwargs)
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
def report(breach: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Per controller, what Art. 33(3) requires a notification to contain."""
    scope = breach["scope"]
    controllers = {}
    for tenant, c in breach["assessment"]["controllers"].items():
        consequences = (
            [
                "None expected for the callers: the exposed data is encrypted and unreadable "
                "without keys that were not exposed (Art. 34(3)(a))."
            ]
            if c["art34_3a_applies"]
            else [
                "Callers' voices and what they said in the calls may be listened to by others.",
                "Telephone numbers may be linked to the calls and used to contact the callers.",
                "Risk of embarrassment, fraud or social engineering based on call content.",
            ]
        )
        measures = [
            "The affected scope was identified from the vault's catalog and this register.",
            "Access paths in scope were closed and credentials rotated.",
        ]
        if scope["kind"] == "key":
            measures.append(
                f"Rotate the tenant's keys and re-wrap every data key under the new version "
                f"(`ivr keys rotate --tenant {tenant} --rewrap`); the exposed version then "
                "opens nothing still kept."
            )
        if not c["art34_3a_applies"]:
            measures.append(
                "Tell the affected callers without undue delay (Art. 34); their numbers come "
                f"from `ivr breach subjects {breach['id']}`."
            )
        measures.append("Consider erasing recordings no longer needed (`ivr recordings delete`).")
        controllers[tenant] = {
            "controller": c["name"],
            "dpo_contact": c["dpo_contact"],
            "nature": f"{breach['description']} Scope: {scope['description']}.",
            "detected_at": breach["detected_at"],
            "deadline": breach["deadline"],
            "time_left_hours": round(time_left(breach, now).total_seconds() / 3600, 1),
            "categories_of_data": c["categories"],
            "approximate_subjects": c["subjects"],
            "approximate_records": c["records"],
            "lawful_bases": c["lawful_bases"],
            "likely_consequences": consequences,
            "measures": measures,
            "art34_3a_applies": c["art34_3a_applies"],
            "art34_reason": c["art34_reason"],
            "subjects_must_be_told": not c["art34_3a_applies"],
        }
    return {"breach": breach["id"], "status": breach["status"], "controllers": controllers}


def render_markdown(rep: dict[str, Any]) -> str:
    lines = [f"# Personal data breach {rep['breach']} ({rep['status']})", ""]
    for tenant, c in rep["controllers"].items():
        lines += [
            f"## Notification for {c['controller']} ({tenant})",
            "",
            "Content required by GDPR Art. 33(3).",
            "",
            f"- **Nature of the breach:** {c['nature']}",
            f"- **Became aware:** {c['detected_at']}; notify the supervisory authority by "
            f"{c['deadline']} ({c['time_left_hours']} h left).",
            f"- **Categories of data:** {', '.join(c['categories_of_data'])}.",
            f"- **Approximate number of data subjects:** {c['approximate_subjects']}; "
            f"of records: {c['approximate_records']}.",
            f"- **Lawful bases of the processing:** {', '.join(c['lawful_bases'])}.",
            f"- **Data protection officer:** {c['dpo_contact'] or '(not configured)'}",
            "- **Likely consequences:**",
            *[f"  - {x}" for x in c["likely_consequences"]],
            "- **Measures taken or proposed:**",
            *[f"  - {x}" for x in c["measures"]],
            "- **Notice to the callers (Art. 34):** "
            + ("not required, Art. 34(3)(a): " if c["art34_3a_applies"] else "required: ")
            + c["art34_reason"]
            + ".",
            "",
        ]
    return "\n".join(lines)
