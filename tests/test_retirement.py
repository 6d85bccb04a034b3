"""Erasure that reaches backups: retiring key versions, the key schedule, and what an erased
call leaves behind (docs/key-custody.md, "Backups and erasure"; docs/gdpr.md duty 7).

Backups here are taken as docs/key-custody.md says: the catalog with SQLite's online backup,
then the blobs directory, and never the keyring or the master key (those are backed up
separately, and only the current keyring is kept).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from ivr.cli import main
from ivr.config import ConfigError, load_config
from ivr.service import VAULT, create_app
from storage import lifecycle
from storage.audit import verify_catalog
from storage.catalog import RecordingRow
from storage.custody import generate_keypair, public_b64, rewrap_to_public
from storage.errors import VaultError
from storage.keys import KeyCustodyError, KeyringCorrupt, UnknownKey
from storage.retirement import KeySchedule, OldKeysInUse, old_key_use, retire, run_schedule
from storage.vault import CATALOG_FILE, Vault
from tests.independent_decrypter import decrypt as independent_decrypt

MASTER = os.urandom(32)
CALLER = "+46701234567"
OTHER = "+46709999999"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CALL_SID = "CA0123456789abcdef0123456789abcdef"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def open_vault(path: Path, clock: Clock | None = None, **kwargs: object) -> Vault:
    return Vault(path, master_key=MASTER, clock=clock or Clock(T0), fsync=False, **kwargs)  # type: ignore[arg-type]


def record(
    vault: Vault, caller: str = CALLER, *, platform_call_id: str | None = None
) -> RecordingRow:
    call = vault.open_call(
        tenant="acme", platform="twilio", platform_call_id=platform_call_id, caller=caller
    )
    rec = vault.start_recording(
        tenant="acme", call_id=call, lawful_basis="consent", purpose="quality"
    )
    for i in range(60):
        rec.append(0, i * 20, bytes([i % 256]) * 160)
    return rec.close()


def read_all(vault: Vault, recording_id: str) -> int:
    """Frames of a recording, decrypted and verified through the vault's own reader."""
    with vault.open_reader(recording_id) as reader:
        return sum(1 for _ in reader.frames())


def backup(data: Path, dest: Path) -> None:
    """Catalog (SQLite online backup: consistent while the service writes), then blobs. The
    keyring and the master key are not in it."""
    dest.mkdir()
    source = sqlite3.connect(data / CATALOG_FILE)
    target = sqlite3.connect(dest / CATALOG_FILE)
    with target:
        source.backup(target)
    source.close()
    target.close()
    shutil.copytree(data / "blobs", dest / "blobs")


def restore_beside(backup_dir: Path, live: Path, dest: Path) -> Path:
    """The old catalog and blobs, with the live keyring beside them."""
    shutil.copytree(backup_dir, dest)
    shutil.copy2(live / "keyring.json", dest / "keyring.json")
    return dest


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


# -- the backup, end to end ---------------------------------------------------------------------
def test_an_erased_recording_in_a_backup_stops_decrypting_when_its_key_version_is_retired(
    tmp_path: Path,
) -> None:
    data = tmp_path / "var"
    with open_vault(data) as vault:
        erased = record(vault)  # under local/1
        vault.keyring.rotate("acme")
        kept = record(vault, OTHER)  # under local/2
        assert (erased.key_ref, kept.key_ref) == ("local/1", "local/2")
        frames_kept = read_all(vault, kept.id)
    backup(data, tmp_path / "backup")
    keyring_copy = (data / "keyring.json").read_bytes()  # a keyring backup of the same day
    v1_sealed = next(
        k["wrapped"]
        for k in json.loads((data / "keyring.json").read_text())["tenants"]["acme"]["keks"]
        if k["version"] == 1
    )

    with open_vault(data) as vault:
        lifecycle.erase(vault, erased.id, reason="Art. 17 request", actor="dpo")
    # Erasure alone does not reach the backup: beside the live keyring it still decrypts.
    with open_vault(restore_beside(tmp_path / "backup", data, tmp_path / "r1")) as old:
        assert read_all(old, erased.id) == 60

    with open_vault(data) as vault:
        vault.keyring.rotate("acme")
        from storage.custody import rewrap_local

        rewrap_local(vault, "acme", actor="ops")
        report = retire(vault, "acme", 2, actor="ops")  # version 1 only
        assert [k.version for k in report.retired] == [1] and report.kept == (2, 3)
        assert verify_catalog(vault.catalog).ok
        assert read_all(vault, kept.id) == frames_kept  # live data is unaffected
    # No copy of the retired KEK is left in the data directory (keyring file, catalog, WAL).
    assert files_holding(data, v1_sealed.encode()) == []

    with open_vault(restore_beside(tmp_path / "backup", data, tmp_path / "r2")) as old:
        with pytest.raises(UnknownKey, match="no key version 1"):
            read_all(old, erased.id)
        # The same backup's recording that was not erased still opens with the live keyring.
        assert read_all(old, kept.id) == frames_kept
        # And no key the live keyring holds opens the erased one's wrapped data key.
        row = old.get(erased.id)
        assert row.wrapped_dek is not None
        for info in old.keyring.list("acme"):
            with pytest.raises(KeyringCorrupt):
                from storage.keys import unwrap_dek

                unwrap_dek(
                    old.keyring.kek("acme", info.key_ref),
                    "acme",
                    row.id,
                    row.key_ref or "",
                    row.wrapped_dek,
                )
            blob = old.blobs.path(row.blob_path or "").read_bytes()
            with pytest.raises(ValueError):
                independent_decrypt(blob, old.keyring.kek("acme", info.key_ref))
        # What the restored backup still says of the erased call: its row, platform call id
        # and keyed hash are back (the lookup key is never rotated); the number does not open.
        call_id = row.call_id or ""
        found = old.catalog.calls_by_caller("acme", old.caller_hash("acme", CALLER))
        assert [c["id"] for c in found] == [call_id]
        with pytest.raises(UnknownKey):
            old.caller_of(call_id)

    # An older keyring copy still holds version 1: with it the backup opens the erased
    # recording again. Hence "keep only the newest keyring copy".
    stale = restore_beside(tmp_path / "backup", data, tmp_path / "r3")
    (stale / "keyring.json").write_bytes(keyring_copy)
    with open_vault(stale) as old:
        assert read_all(old, erased.id) == 60


# -- retiring by hand ---------------------------------------------------------------------------
@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IVR_MASTER_KEY", base64.b64encode(MASTER).decode())


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_retire_is_refused_while_a_live_key_uses_an_old_version(
    cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "var"
    with open_vault(data) as vault:
        record(vault)
        record(vault, OTHER)
        vault.keyring.rotate("acme")  # without --rewrap: both stay under local/1
        before = (data / "keyring.json").read_bytes()
        with pytest.raises(OldKeysInUse) as refused:
            retire(vault, "acme", 2, actor="ops")
        assert str(refused.value) == (
            "tenant acme: cannot retire key versions before 2: 2 recording(s) and 2 caller "
            "number(s) still use local/1; re-wrap them first with "
            "`ivr keys rotate --tenant acme --rewrap`, then retire"
        )
        assert (data / "keyring.json").read_bytes() == before  # nothing destroyed
        assert [k.version for k in vault.keyring.list("acme")] == [1, 2]
        events = vault.catalog.audit_events()
        assert events[-1].action == "key.retire.refused"
        assert events[-1].detail["recordings"] == {"local/1": 2}

    code, _, err = run(
        capsys, "keys", "retire", "--tenant", "acme", "--before", 2, "--data-dir", data
    )
    assert code == 1 and "2 recording(s) and 2 caller number(s) still use local/1" in err
    code, _, err = run(
        capsys, "keys", "retire", "--tenant", "acme", "--before", 3, "--data-dir", data
    )
    assert code == 1 and "the newest version, 2, must stay" in err

    assert run(capsys, "keys", "rotate", "--tenant", "acme", "--rewrap", "--data-dir", data)[0] == 0
    code, out, _ = run(
        capsys, "keys", "retire", "--tenant", "acme", "--before", 3, "--data-dir", data, "--json"
    )
    result = json.loads(out)
    assert code == 0 and [k["version"] for k in result["retired"]] == [1, 2]
    assert result["kept"] == [3]
    code, out, _ = run(
        capsys, "keys", "retire", "--tenant", "acme", "--before", 3, "--data-dir", data
    )
    assert code == 0 and "no key version before 3 is left" in out
    with open_vault(data) as vault:
        retired = [e for e in vault.catalog.audit_events() if e.action == "key.retired"]
        assert len(retired) == 1 and retired[0].detail["versions"] == [1, 2]
        assert retired[0].target == "local/3" and verify_catalog(vault.catalog).ok
        assert all(read_all(vault, r.id) == 60 for r in vault.list())


def test_retire_counts_a_caller_number_without_a_recording(tmp_path: Path) -> None:
    """A call nobody recorded (the caller declined) still has its number sealed under a KEK."""
    with open_vault(tmp_path / "var") as vault:
        vault.open_call(tenant="acme", platform="twilio", caller=CALLER)
        vault.keyring.rotate("acme")
        use = old_key_use(vault, "acme", 2)
        assert (dict(use.recordings), dict(use.callers)) == ({}, {"local/1": 1})
        with pytest.raises(OldKeysInUse, match="0 recording\\(s\\) and 1 caller number"):
            retire(vault, "acme", 2, actor="ops")


def test_a_public_key_tenant_retires_its_old_local_versions_after_resealing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "var"
    with open_vault(data) as vault:
        local = record(vault)
    private, public = generate_keypair()
    with open_vault(data, public_keys={"acme": public}) as vault:
        sealed = record(vault, OTHER)
        assert sealed.key_ref is not None and sealed.key_ref.startswith("x25519/")
        vault.keyring.rotate("acme")  # a local version that wraps nothing
        with pytest.raises(OldKeysInUse, match="`ivr keys rewrap --tenant acme --config FILE`"):
            retire(vault, "acme", 2, actor="ops")
        rewrap_to_public(vault, "acme", public, private_key=None, actor="ops")
        assert [k.version for k in retire(vault, "acme", 2, actor="ops").retired] == [1]
        assert vault.get(local.id).key_ref == sealed.key_ref
        with vault.open_reader(local.id, private_key=private) as reader:
            assert sum(1 for _ in reader.frames()) == 60
    assert public_b64(public)  # the key the configuration would name


def test_retire_of_an_unknown_tenant_names_it(tmp_path: Path) -> None:
    with open_vault(tmp_path / "var") as vault, pytest.raises(UnknownKey, match="'nobody'"):
        retire(vault, "nobody", 1, actor="ops")


# -- the schedule -------------------------------------------------------------------------------
def test_the_schedule_rotates_rewraps_and_retires_on_its_clock(tmp_path: Path) -> None:
    clock = Clock(T0)
    data = tmp_path / "var"
    schedule = KeySchedule(rotate_every_days=30, retire_after_days=35)
    with open_vault(data, clock) as vault:
        row = record(vault)
        steps = {}
        for day in range(0, 70):
            clock.now = T0 + timedelta(days=day)
            for step in run_schedule(vault, schedule, now=clock.now):
                if step.changed:
                    steps[day] = (step.rotated_to, step.rewrapped, step.retired)
        # Day 30: version 2, the recording's key and its caller number moved to it; day 60:
        # version 3 (nothing left to move); day 65: version 1's successor is 35 days old.
        assert steps == {30: (2, 2, ()), 60: (3, 2, ()), 65: (None, 0, (1,))}
        assert [k.version for k in vault.keyring.list("acme")] == [2, 3]
        assert vault.get(row.id).key_ref == "local/3" and read_all(vault, row.id) == 60
        actors = {e.actor for e in vault.catalog.audit_events() if e.action.startswith("key.")}
        assert actors == {"system:keys"}


def test_with_the_schedule_a_backup_stops_opening_an_erasure_within_the_documented_bound(
    tmp_path: Path,
) -> None:
    """docs/configuration.md: unreadable from E + rotate_every_days + retire_after_days on."""
    clock = Clock(T0)
    data = tmp_path / "var"
    rotate, retire_after = 30, 35
    schedule = KeySchedule(rotate_every_days=rotate, retire_after_days=retire_after)
    with open_vault(data, clock) as vault:
        erased = record(vault)
        kept = record(vault, OTHER)
    backup(data, tmp_path / "backup")
    erased_at = T0 + timedelta(hours=1)
    readable_until = None
    for day in range(0, rotate + retire_after + 2):
        clock.now = erased_at + timedelta(days=day)
        with open_vault(data, clock) as vault:
            if day == 0:
                lifecycle.erase(vault, erased.id, reason="Art. 17", actor="dpo")
            run_schedule(vault, schedule, now=clock.now)
        restored = restore_beside(tmp_path / "backup", data, tmp_path / f"r{day}")
        with open_vault(restored, clock) as old:
            try:
                read_all(old, erased.id)
                readable_until = day
            except UnknownKey:
                pass
        shutil.rmtree(restored)
    assert readable_until is not None and readable_until < rotate + retire_after
    with open_vault(data, clock) as vault:
        assert read_all(vault, kept.id) == 60


def test_without_retire_after_days_old_versions_stay(tmp_path: Path) -> None:
    clock = Clock(T0)
    with open_vault(tmp_path / "var", clock) as vault:
        record(vault)
        for day in (30, 60, 400):
            clock.now = T0 + timedelta(days=day)
            run_schedule(vault, KeySchedule(rotate_every_days=30), now=clock.now)
        assert [k.version for k in vault.keyring.list("acme")] == [1, 2, 3, 4]


def test_the_schedule_leaves_public_key_tenants_alone(tmp_path: Path) -> None:
    clock = Clock(T0)
    _, public = generate_keypair()
    with open_vault(tmp_path / "var", clock, public_keys={"acme": public}) as vault:
        record(vault)
        clock.now = T0 + timedelta(days=400)
        schedule = KeySchedule(rotate_every_days=1, retire_after_days=1)
        assert run_schedule(vault, schedule, now=clock.now) == []


def test_a_schedule_of_zero_days_is_refused() -> None:
    with pytest.raises(ValueError, match="rotate_every_days must be at least 1 day"):
        KeySchedule(rotate_every_days=0)


TENANT = '[tenants.acme]\ndisplay_name = "Acme"\ndpo_contact = "dpo@acme.example"\n'


def test_the_configuration_sets_the_schedule_and_names_bad_keys(tmp_path: Path) -> None:
    path = tmp_path / "ivr.toml"
    path.write_text("[keys]\nrotate_every_days = 30\nretire_after_days = 35\n" + TENANT)
    config = load_config(path, {})
    assert (config.key_rotate_every_days, config.key_retire_after_days) == (30, 35)
    assert not any("retire_after_days" in w for w in config.warnings)

    path.write_text(
        '[keys]\nrotate_every_days = 0\nretire_after_days = "35"\nretire = 1\n' + TENANT
    )
    with pytest.raises(ConfigError) as bad:
        load_config(path, {})
    errors = str(bad.value)
    assert f"{path}: keys.rotate_every_days:" in errors
    assert f"{path}: keys.retire_after_days: expected an integer" in errors
    assert f"{path}: keys: unknown key 'retire'" in errors

    path.write_text("[keys]\nrotate_every_days = 30\n" + TENANT)
    assert any(
        "keys.rotate_every_days is set without keys.retire_after_days" in w
        for w in load_config(path, {}).warnings
    )
    path.write_text(TENANT)
    config = load_config(path, {})
    assert (config.key_rotate_every_days, config.key_retire_after_days) == (None, None)


async def test_the_service_runs_the_schedule_after_its_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IVR_MASTER_KEY", base64.b64encode(MASTER).decode())
    clock = Clock(datetime.now(UTC))
    with Vault(tmp_path, fsync=False, clock=clock) as v:
        row = record(v)
        v.keyring.rotate("acme")
        v.keyring.rotate("acme")
    clock.now += timedelta(days=40)  # the service starts 40 days later
    path = tmp_path / "ivr.toml"
    path.write_text("[keys]\nrotate_every_days = 30\nretire_after_days = 35\n" + TENANT)
    app = create_app(load_config(path, {}), tmp_path, clock=clock, fsync=False, sweep_interval=0.01)
    server = TestServer(app)
    await server.start_server()
    try:
        for _ in range(300):  # a few loop passes: the first sweep runs at start
            if [k.version for k in app[VAULT].keyring.list("acme")] == [3, 4]:
                break
            await asyncio.sleep(0.01)
        # Version 3, newest and 40 days old, got a successor (4) and everything moved to it;
        # versions 1 and 2, whose successors are 40 days old, are destroyed; 3 stays until 4
        # is 35 days old.
        assert [k.version for k in app[VAULT].keyring.list("acme")] == [3, 4]
        assert app[VAULT].get(row.id).key_ref == "local/4"
    finally:
        await server.close()


# -- what an erased call leaves behind ----------------------------------------------------------
def test_subject_erasure_removes_the_platform_call_id(
    cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "var"
    with open_vault(data) as vault:
        row = record(vault, platform_call_id=CALL_SID)
        other = record(vault, OTHER, platform_call_id="CA" + "f" * 32)
    assert files_holding(data, CALL_SID.encode())  # before: in the catalog
    code, out, _ = run(
        capsys, "subject", "erase", "--phone", CALLER, "--reason", "Art. 17", "--data-dir", data,
        "--json",
    )  # fmt: skip
    result = json.loads(out)
    assert code == 0 and result["erased"] == [row.id]
    # The operator is told which platform calls to erase at the platform (its call log).
    assert result["platform_calls"] == [{"platform": "twilio", "id": CALL_SID}]
    with open_vault(data) as vault:
        call = vault.catalog.query("SELECT * FROM calls WHERE erased_at IS NOT NULL")
        assert len(call) == 1 and call[0]["platform_call_id"] is None
        assert call[0]["caller_hash"] is None and call[0]["caller_sealed"] is None
        assert vault.get(row.id).call_id is None
        kept_call = vault.catalog.call(other.call_id or "")
        assert kept_call is not None and kept_call["platform_call_id"] == "CA" + "f" * 32
        assert verify_catalog(vault.catalog).ok
        assert not any(CALL_SID in json.dumps(e.detail) for e in vault.catalog.audit_events())
    # Nowhere in the data directory any more: not the catalog, its WAL, the audit log.
    assert files_holding(data, CALL_SID.encode()) == []

    code, out, _ = run(
        capsys, "subject", "erase", "--phone", OTHER, "--reason", "Art. 17", "--data-dir", data
    )
    assert code == 0 and "erase them there too" in out and "CA" + "f" * 32 in out


def test_the_sweep_removes_platform_call_ids_with_the_caller_number(tmp_path: Path) -> None:
    clock = Clock(T0)
    data = tmp_path / "var"
    with open_vault(data, clock) as vault:
        declined = vault.open_call(
            tenant="acme", platform="twilio", platform_call_id=CALL_SID, caller=CALLER
        )
        withheld = vault.open_call(
            tenant="acme", platform="twilio", platform_call_id="CA" + "0" * 32
        )
        clock.now = T0 + timedelta(days=31)
        report = lifecycle.sweep(vault, now=clock.now, dry_run=False, actor="t")
        assert report.calls_scrubbed == 2
        for call_id in (declined, withheld):
            row = vault.catalog.call(call_id)
            assert row is not None and row["platform_call_id"] is None
    assert files_holding(data, CALL_SID.encode()) == []


def test_erasing_one_recording_keeps_refusing_in_progress(tmp_path: Path) -> None:
    """Unchanged: a recording still being written is not erased (its key is in use)."""
    with open_vault(tmp_path / "var") as vault:
        rec = vault.start_recording(tenant="acme", lawful_basis="consent", purpose="q")
        with pytest.raises(VaultError):
            lifecycle.erase(vault, rec.id, reason="x", actor="dpo")
        rec.close()


def test_retire_refuses_a_version_below_one(tmp_path: Path) -> None:
    with open_vault(tmp_path / "var") as vault:
        record(vault)
        with pytest.raises(KeyCustodyError, match="give a version from 1 to 1"):
            retire(vault, "acme", 0, actor="ops")


# -- what the documents say -----------------------------------------------------------------------
def _erasure_text(config_text: str | None, tmp_path: Path) -> str:
    from ivr.gdpr.ropa import ProcessorInfo, build_ropa

    if config_text is None:
        config = load_config(None)
    else:
        path = tmp_path / "ivr.toml"
        path.write_text(config_text)
        config = load_config(path, {})
    ropa = build_ropa(
        config, tenant=None, data_dir=None, now=T0, processor=ProcessorInfo("P", "p@example")
    )
    texts = [*ropa["controllers"][0]["erasure"]]
    for section in ropa["annex"]:
        texts += section["measures"]
    return " ".join(texts)


def test_the_ropa_says_when_a_backup_stops_opening_an_erased_recording(tmp_path: Path) -> None:
    scheduled = _erasure_text(
        "[keys]\nrotate_every_days = 30\nretire_after_days = 35\n" + TENANT, tmp_path
    )
    assert "at the latest 65 day(s) (plus one sweep) after its erasure" in scheduled
    assert "backups included" not in scheduled and "every copy" not in scheduled
    assert "only in their newest copy" in scheduled
    # Without a schedule it says that nothing ends it but an operator.
    demo = _erasure_text(None, tmp_path)
    assert "no retirement schedule is configured" in demo
    assert "backups included" not in demo and "every copy" not in demo
    assert "platform's call id" in demo
