"""Retiring old key versions, and the rotation schedule that makes erasure reach backups.

Erasure destroys a recording's wrapped data key in the live catalog. A copy of the catalog taken
before (a backup) still holds that wrapped key, and opens with the tenant's KEK version that
wrapped it for as long as the keyring has that version. So an erased recording becomes
unreadable in such a copy when that version is *retired*: destroyed in the keyring.

Retiring version ``v`` is safe only once nothing live needs it: every data key not yet erased
and every sealed caller number of the tenant is wrapped under a newer version (``ivr keys rotate
--rewrap`` moves them). :func:`retire` checks this inside the catalog's write transaction and
refuses otherwise; the keyring file is rewritten without the old versions in that same
transaction, with a ``key.retired`` audit entry, and the write-ahead log is emptied afterwards.

:func:`run_schedule` is what the service runs after each retention sweep: rotate a tenant's KEK
(and re-wrap everything under the new version) when its newest version is ``rotate_every_days``
old, and retire each version whose successor has existed for ``retire_after_days``. Tenants
under public-key custody are left alone: their data keys are sealed to the controller's key,
not wrapped by a KEK, and the service cannot retire a private key it never held.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from storage.custody import rewrap_local
from storage.files import parse_utc
from storage.keys import KekInfo, KeyCustodyError, UnknownKey
from storage.sql import Connection

if TYPE_CHECKING:
    from storage.vault import Vault

RETIRE_ACTION = "key.retired"
SCHEDULE_ACTOR = "system:keys"


@dataclass(frozen=True, slots=True)
class OldKeyUse:
    """What of a tenant still needs local KEK versions older than ``before``."""

    tenant: str
    before: int
    recordings: Mapping[str, int]  # key_ref → live data keys wrapped under it
    callers: Mapping[str, int]  # key_ref → sealed caller numbers under it

    @property
    def total(self) -> int:
        return sum(self.recordings.values()) + sum(self.callers.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "before": self.before,
            "recordings": dict(sorted(self.recordings.items())),
            "callers": dict(sorted(self.callers.items())),
        }


class OldKeysInUse(KeyCustodyError):
    """Retiring was refused: live data keys or caller numbers still use an old version."""

    def __init__(self, use: OldKeyUse, *, public_key_custody: bool) -> None:
        self.use = use
        rewrap = (
            f"`ivr keys rewrap --tenant {use.tenant} --config FILE`"
            if public_key_custody
            else f"`ivr keys rotate --tenant {use.tenant} --rewrap`"
        )
        refs = sorted({*use.recordings, *use.callers}, key=_version_of)
        super().__init__(
            f"tenant {use.tenant}: cannot retire key versions before {use.before}: "
            f"{sum(use.recordings.values())} recording(s) and {sum(use.callers.values())} "
            f"caller number(s) still use {', '.join(refs)}; re-wrap them first with {rewrap}, "
            "then retire"
        )


@dataclass(frozen=True, slots=True)
class RetireReport:
    tenant: str
    before: int
    retired: tuple[KekInfo, ...]  # the versions destroyed (none: nothing older was left)
    kept: tuple[int, ...]  # the versions that remain

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "before": self.before,
            "retired": [
                {"version": k.version, "fingerprint": k.fingerprint, "created_at": k.created_at}
                for k in self.retired
            ],
            "kept": list(self.kept),
        }


def _version_of(key_ref: str) -> int:
    return int(key_ref.removeprefix("local/"))


def _old_refs(db: Connection, table: str, tenant: str, before: int) -> dict[str, int]:
    ref, sealed = (
        ("key_ref", "wrapped_dek") if table == "recordings" else ("caller_key_ref", "caller_sealed")
    )
    rows = db.execute(
        f"SELECT {ref} AS ref, COUNT(*) AS n FROM {table} WHERE tenant = ?"
        f" AND {sealed} IS NOT NULL AND {ref} LIKE 'local/%'"
        f" AND CAST(substr({ref}, 7) AS INTEGER) < ? GROUP BY {ref}",
        (tenant, before),
    ).fetchall()
    return {row["ref"]: row["n"] for row in rows}


def _use(db: Connection, tenant: str, before: int) -> OldKeyUse:
    return OldKeyUse(
        tenant,
        before,
        MappingProxyType(_old_refs(db, "recordings", tenant, before)),
        MappingProxyType(_old_refs(db, "calls", tenant, before)),
    )


def old_key_use(vault: Vault, tenant: str, before: int) -> OldKeyUse:
    """Live data keys and caller numbers of ``tenant`` under local versions below ``before``."""
    with vault.catalog.transaction() as db:
        return _use(db, tenant, before)


def retire(vault: Vault, tenant: str, before: int, *, actor: str) -> RetireReport:
    """Destroy ``tenant``'s KEK versions older than ``before``, or raise OldKeysInUse (audited
    as ``key.retire.refused``) and change nothing.

    The check and the keyring change happen inside one catalog write transaction, so no
    re-wrap or erasure of this data directory interleaves; the ``key.retired`` entry commits
    with it. Afterwards the write-ahead log is checkpointed and truncated, so page images from
    before the last re-wrap (old wrapped keys) do not outlive it there either."""
    versions = [k.version for k in vault.keyring.list(tenant)]
    if not versions:
        raise UnknownKey(f"tenant {tenant!r} has no keys")
    if not 1 <= before <= max(versions):
        raise KeyCustodyError(
            f"tenant {tenant}: cannot retire versions before {before}: the newest version, "
            f"{max(versions)}, must stay (give a version from 1 to {max(versions)}; "
            f"`ivr keys rotate --tenant {tenant}` makes a newer one)"
        )
    public = vault.public_key_of(tenant) is not None
    refused: OldKeyUse | None = None
    with vault.catalog.transaction() as db:
        use = _use(db, tenant, before)
        if use.total:
            refused = use
        else:
            retired = vault.keyring.retire(tenant, before)
            if retired:
                vault.catalog.audit(
                    db,
                    actor=actor,
                    action=RETIRE_ACTION,
                    tenant=tenant,
                    target=f"local/{before}",
                    detail={
                        "before": before,
                        "versions": [k.version for k in retired],
                        "fingerprints": {str(k.version): k.fingerprint for k in retired},
                    },
                )
    if refused is not None:
        vault.audit(
            actor=actor,
            action="key.retire.refused",
            tenant=tenant,
            target=f"local/{before}",
            detail=refused.as_dict(),
        )
        raise OldKeysInUse(refused, public_key_custody=public)
    vault.catalog.checkpoint()
    kept = tuple(k.version for k in vault.keyring.list(tenant))
    return RetireReport(tenant, before, tuple(retired), kept)


# -- the schedule ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class KeySchedule:
    """``rotate_every_days``: a tenant's newest KEK version this old gets a successor, and
    everything is re-wrapped under it. ``retire_after_days``: a version whose successor is this
    old is retired. None: that half is off."""

    rotate_every_days: int | None = None
    retire_after_days: int | None = None

    def __post_init__(self) -> None:
        for name in ("rotate_every_days", "retire_after_days"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"KeySchedule.{name} must be at least 1 day, got {value}")

    @property
    def active(self) -> bool:
        return self.rotate_every_days is not None or self.retire_after_days is not None


@dataclass(frozen=True, slots=True)
class ScheduledStep:
    """What the schedule did for one tenant in one run."""

    tenant: str
    rotated_to: int | None = None  # the new version, if rotated
    rewrapped: int = 0  # data keys and caller numbers moved to the newest version
    retired: tuple[int, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return self.rotated_to is not None or bool(self.rewrapped) or bool(self.retired)


def run_schedule(
    vault: Vault, schedule: KeySchedule, *, now: datetime, actor: str = SCHEDULE_ACTOR
) -> list[ScheduledStep]:
    """One pass of the schedule over every local-custody tenant with keys, at time ``now``
    (the service passes its clock; tests pass any moment)."""
    steps: list[ScheduledStep] = []
    for tenant in sorted({k.tenant for k in vault.keyring.list()}):
        if vault.public_key_of(tenant) is not None:
            continue
        steps.append(_schedule_tenant(vault, schedule, tenant, now, actor))
    return steps


def _schedule_tenant(
    vault: Vault, schedule: KeySchedule, tenant: str, now: datetime, actor: str
) -> ScheduledStep:
    rotated_to = None
    rewrapped = 0
    if schedule.rotate_every_days is not None:
        newest = max(vault.keyring.list(tenant), key=lambda k: k.version)
        if parse_utc(newest.created_at) + timedelta(days=schedule.rotate_every_days) <= now:
            info = vault.keyring.rotate(tenant)
            vault.audit(
                actor=actor,
                action="key.rotated",
                tenant=tenant,
                target=info.key_ref,
                detail={
                    "version": info.version,
                    "fingerprint": info.fingerprint,
                    "schedule": f"every {schedule.rotate_every_days} day(s)",
                },
            )
            rotated_to = info.version
            report = rewrap_local(vault, tenant, actor=actor)
            rewrapped += report.recordings + report.callers
    retired: tuple[int, ...] = ()
    if schedule.retire_after_days is not None:
        created = {k.version: parse_utc(k.created_at) for k in vault.keyring.list(tenant)}
        age = timedelta(days=schedule.retire_after_days)
        due = [v for v in created if v + 1 in created and created[v + 1] + age <= now]
        if due:
            before = max(due) + 1
            if old_key_use(vault, tenant, before).total:
                # Keys left behind (a rotation by hand without --rewrap): move them first.
                report = rewrap_local(vault, tenant, actor=actor)
                rewrapped += report.recordings + report.callers
            retired = tuple(k.version for k in retire(vault, tenant, before, actor=actor).retired)
    return ScheduledStep(tenant, rotated_to, rewrapped, retired)
