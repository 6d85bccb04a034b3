"""Retention, legal holds, erasure (also per data subject), subject access, the audit chain."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import zipfile
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestServer

from ivr.cli import main
from ivr.config import load_config
from ivr.service import VAULT, create_app
from storage import lifecycle
from storage.audit import verify_catalog
from storage.catalog import RecordingStatus
from storage.vault import Vault
from tests.independent_decrypter import decrypt as independent_decrypt
from tests.stored_blobs import blob_bytes, blobs_of

MASTER = os.urandom(32)
CALLER = "+46701234567"
OTHER = "+46709999999"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock():
    return Clock(T0)


@pytest.fixture
def vault(tmp_path, clock):
    v = Vault(tmp_path / "var", master_key=MASTER, clock=clock, fsync=False)
    yield v
    v.close()


def record(vault, caller=CALLER, days=30, tenant="acme", basis="consent", language="sv"):
    call = vault.open_call(tenant=tenant, platform="test", caller=caller)
    rec = vault.start_recording(
        tenant=tenant,
        call_id=call,
        lawful_basis=basis,
        purpose="quality",
        consent_evidence={"decision": "accepted", "language": language},
        retention_until=vault.clock() + timedelta(days=days),
    )
    for i in range(100):
        rec.append(0, i * 20, bytes([i % 256]) * 160)
    return rec.close()


# -- holds and erasure ----------------------------------------------------------------------------
def test_erasure_crypto_shreds_and_leaves_a_tombstone(vault):
    row = record(vault)
    copy = blob_bytes(vault, row)  # a backup taken before the erasure
    wrapped = row.wrapped_dek
    erased = lifecycle.erase(vault, row.id, reason="Art. 17 request", actor="dpo")
    assert erased.status is RecordingStatus.ERASED and erased.wrapped_dek is None
    assert erased.consent_evidence is None and erased.call_id is None
    assert erased.erasure_reason == "Art. 17 request" and erased.erased_at
    assert (erased.tenant, erased.lawful_basis) == ("acme", "consent")
    assert not blobs_of(vault, "acme", row.id)
    # Nothing left in the data directory opens the copy: the wrapped key is gone from every
    # file (WAL included), and no key in the keyring decrypts the blob directly.
    for path in vault.data_dir.rglob("*"):
        if path.is_file():
            assert wrapped not in path.read_bytes(), path
    for version in range(1, 3):
        try:
            kek = vault.keyring.kek("acme", f"local/{version}")
        except Exception:
            continue
        with pytest.raises(ValueError):
            independent_decrypt(copy, kek)
    assert any(e.action == "recording.erased" for e in vault.catalog.audit_events())


def test_legal_hold_blocks_erasure_until_released(vault):
    row = record(vault)
    lifecycle.set_hold(vault, row.id, reason="litigation 2026-17", actor="dpo")
    with pytest.raises(lifecycle.LegalHold, match="litigation 2026-17"):
        lifecycle.erase(vault, row.id, reason="x", actor="dpo")
    assert vault.get(row.id).status is RecordingStatus.COMPLETE  # nothing half-done
    lifecycle.release_hold(vault, row.id, reason="case closed", actor="dpo")
    assert lifecycle.erase(vault, row.id, reason="x", actor="dpo").status.value == "erased"
    actions = [e.action for e in vault.catalog.audit_events()]
    assert actions[-3:] == ["recording.hold", "recording.release", "recording.erased"]


def test_erasing_a_recording_in_progress_is_refused(vault):
    rec = vault.start_recording(tenant="acme", lawful_basis="consent", purpose="q")
    with pytest.raises(lifecycle.InProgress):
        lifecycle.erase(vault, rec.id, reason="x", actor="dpo")
    assert rec.close().status is RecordingStatus.COMPLETE


# -- retention ------------------------------------------------------------------------------------
def test_sweep_purges_only_what_expired_and_respects_holds(vault, clock):
    short = record(vault, days=10)
    long = record(vault, days=100)
    held = record(vault, days=10)
    lifecycle.set_hold(vault, held.id, reason="audit", actor="dpo")
    later = T0 + timedelta(days=11)
    dry = lifecycle.sweep(vault, now=later, dry_run=True, actor="t")
    assert [r.id for r in dry.purged] == [short.id] and [r.id for r in dry.held] == [held.id]
    assert vault.get(short.id).status is RecordingStatus.COMPLETE  # a dry run changes nothing
    done = lifecycle.sweep(vault, now=later, dry_run=False, actor="t")
    assert [r.id for r in done.purged] == [short.id]
    assert vault.get(short.id).status is RecordingStatus.ERASED
    assert vault.get(long.id).status is RecordingStatus.COMPLETE
    assert vault.get(held.id).status is RecordingStatus.COMPLETE
    assert "retention.sweep" in [e.action for e in vault.catalog.audit_events()]


def test_cli_sweep_with_a_given_time(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", base64.b64encode(MASTER).decode())
    data = tmp_path / "var"
    with Vault(data, fsync=False) as v:
        row = record(v, days=5)
    now = (datetime.now(UTC) + timedelta(days=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert main(["retention", "sweep", "--data-dir", str(data), "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["purged"] == []
    args = ["retention", "sweep", "--data-dir", str(data), "--now", now, "--json"]
    assert main(args) == 0
    assert [x["id"] for x in json.loads(capsys.readouterr().out)["purged"]] == [row.id]
    with pytest.raises(SystemExit):
        main(["retention", "sweep", "--data-dir", str(data), "--now", "yesterday"])


async def test_the_service_sweeps_on_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", base64.b64encode(MASTER).decode())
    clock = Clock(datetime.now(UTC))
    with Vault(tmp_path, fsync=False, clock=clock) as v:
        row = record(v, days=1)
    clock.now += timedelta(days=2)  # the service starts two days later
    app = create_app(load_config(None), tmp_path, clock=clock, fsync=False, sweep_interval=0.01)
    server = TestServer(app)
    await server.start_server()
    try:
        for _ in range(200):
            if app[VAULT].get(row.id).status is RecordingStatus.ERASED:
                break
            await asyncio.sleep(0.01)
        assert app[VAULT].get(row.id).status is RecordingStatus.ERASED
    finally:
        await server.close()


# -- one data subject -----------------------------------------------------------------------------
@pytest.fixture
def cli_vault(tmp_path, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", base64.b64encode(MASTER).decode())
    data = tmp_path / "var"
    with Vault(data, fsync=False) as v:
        rows = {
            "a": record(v),
            "b": record(v),
            "other": record(v, caller=OTHER),
            "globex": record(v, tenant="globex", basis="contract", language="en"),
        }
    return data, rows


def test_subject_erase_by_any_spelling_of_the_number(cli_vault, capsys):
    data, rows = cli_vault
    code = main(
        ["subject", "erase", "--data-dir", str(data), "--phone", "070-123 45 67",
         "--region", "SE", "--reason", "Art. 17", "--json"]
    )  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and sorted(out["erased"]) == sorted(
        [rows["a"].id, rows["b"].id, rows["globex"].id]
    )
    with Vault(data, create=False) as v:
        assert v.get(rows["other"].id).status is RecordingStatus.COMPLETE
        calls = v.catalog.query(
            "SELECT caller_hash, caller_sealed, erased_at FROM calls WHERE erased_at IS NOT NULL"
        )
        assert len(calls) == 3 and all(c[0] is None and c[1] is None for c in calls)
        audit = [e for e in v.catalog.audit_events() if e.action == "subject.erased"]
        assert audit and all(CALLER not in json.dumps(e.detail) for e in audit)


def test_subject_erase_reports_what_a_hold_kept(cli_vault, capsys):
    data, rows = cli_vault
    with Vault(data, create=False) as v:
        lifecycle.set_hold(v, rows["b"].id, reason="court order 7", actor="dpo")
    code = main(
        ["subject", "erase", "--data-dir", str(data), "--phone", CALLER, "--tenant", "acme",
         "--reason", "Art. 17"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1 and f"{rows['b'].id}: kept, under legal hold (court order 7)" in out
    with Vault(data, create=False) as v:
        assert v.get(rows["a"].id).status is RecordingStatus.ERASED
        assert v.get(rows["b"].id).status is RecordingStatus.COMPLETE
        assert v.get(rows["globex"].id).status is RecordingStatus.COMPLETE  # other tenant


@pytest.mark.parametrize("phone", ["12", "not a number", "+999"])
def test_malformed_numbers_are_refused(cli_vault, capsys, phone):
    data, _ = cli_vault
    code = main(["subject", "erase", "--data-dir", str(data), "--phone", phone, "--reason", "x"])
    assert code == 1 and "phone number" in capsys.readouterr().err


def test_subject_export_has_audio_metadata_and_a_summary_in_swedish(cli_vault, capsys, tmp_path):
    data, rows = cli_vault
    out = tmp_path / "export.zip"
    code = main(
        ["subject", "export", "--data-dir", str(data), "--phone", CALLER, "--tenant", "acme",
         "-o", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        for key in ("a", "b"):
            assert f"recordings/{rows[key].id}.wav" in names
            meta = json.loads(zf.read(f"recordings/{rows[key].id}.json"))
            assert meta["lawful_basis"] == "consent" and meta["purpose"] == "quality"
            assert meta["consent_evidence"]["decision"] == "accepted"
            assert meta["retention_until"] == rows[key].retention_until
            assert isinstance(meta["access_log"], list)
        assert f"recordings/{rows['other'].id}.wav" not in names
        summary = zf.read("summary.html").decode()
        assert 'lang="sv"' in summary and "Dina uppgifter" in summary
        assert "ditt samtycke" in summary
    with Vault(data, create=False) as v:
        assert any(e.action == "subject.exported" for e in v.catalog.audit_events())


# -- audit chain ----------------------------------------------------------------------------------
def test_audit_verify_finds_edits_removals_and_a_cut_tail(vault, capsys, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", base64.b64encode(MASTER).decode())
    for n in range(5):
        vault.audit(actor="t", action="thing", target=str(n), detail={"reason": f"r{n}"})
    assert verify_catalog(vault.catalog).ok
    head = verify_catalog(vault.catalog).head
    with vault.catalog.transaction() as db:  # someone with write access to the catalog
        db.execute('UPDATE audit_events SET detail = \'{"reason": "forged"}\' WHERE seq = 3')
    verdict = verify_catalog(vault.catalog)
    assert not verdict.ok and verdict.problems[0].seq == 3 and "edited" in verdict.problems[0].what
    with vault.catalog.transaction() as db:
        db.execute("DELETE FROM audit_events WHERE seq = 3")
    problems = [p.what for p in verify_catalog(vault.catalog).problems if p.seq == 4]
    assert any("missing" in p for p in problems) and any("removed or moved" in p for p in problems)
    with vault.catalog.transaction() as db:
        db.execute("DELETE FROM audit_events WHERE seq = 5")  # the tail
    assert any("head" in p.what for p in verify_catalog(vault.catalog, expect_head=head).problems)
    args = ["audit", "verify", "--data-dir", str(vault.data_dir)]
    assert main(args) == 1 and "BROKEN" in capsys.readouterr().out


def test_subject_export_of_a_public_key_tenant_holds_its_audio_sealed_without_the_key(
    tmp_path, capsys, monkeypatch
):
    from storage.custody import write_keypair

    monkeypatch.setenv("IVR_MASTER_KEY", base64.b64encode(MASTER).decode())
    private, _, public = write_keypair(tmp_path / "keys")
    data = tmp_path / "var"
    with Vault(data, fsync=False, public_keys={"acme": public}) as v:
        row = record(v)
    base = ["subject", "export", "--data-dir", str(data), "--phone", CALLER, "--tenant", "acme"]
    held = tmp_path / "held.zip"
    assert main([*base, "-o", str(held)]) == 0
    assert f"{row.id}: held, sealed to {row.key_ref}" in capsys.readouterr().out
    with zipfile.ZipFile(held) as zf:
        assert f"recordings/{row.id}.wav" not in zf.namelist()
        assert json.loads(zf.read(f"recordings/{row.id}.json"))["audio"] == "held_sealed"
    out = tmp_path / "yes.zip"
    assert main([*base, "-o", str(out), "--private-key", str(private)]) == 0
    with zipfile.ZipFile(out) as zf:
        assert f"recordings/{row.id}.wav" in zf.namelist()


def test_refused_cli_attempts_are_audited_and_change_nothing(cli_vault, capsys):
    data, rows = cli_vault
    rid = rows["a"].id
    base = ["--data-dir", str(data)]
    assert main(["recordings", "hold", rid, "--reason", "court", *base]) == 0
    assert main(["recordings", "delete", rid, "--reason", "Art. 17", *base]) == 1
    assert "legal hold" in capsys.readouterr().err
    assert main(["recordings", "delete", "rec_nope", "--reason", "x", *base]) == 1
    assert "rec_nope" in capsys.readouterr().err
    with Vault(data, create=False) as v:
        assert v.get(rid).status is RecordingStatus.COMPLETE
        refused = [e for e in v.catalog.audit_events() if e.action == "recording.erase.refused"]
        assert [e.target for e in refused] == [rid, "rec_nope"]


def test_sweep_removes_caller_numbers_of_calls_with_nothing_left(vault, clock):
    declined = vault.open_call(tenant="acme", platform="test", caller=OTHER)  # nothing recorded
    kept = record(vault, days=365)
    gone = record(vault, days=10)
    clock.now = T0 + timedelta(days=40)
    report = lifecycle.sweep(vault, now=clock.now, dry_run=False, actor="t")
    assert [r.id for r in report.purged] == [gone.id] and report.calls_scrubbed == 2
    assert vault.caller_of(declined) is None and vault.caller_of(gone.call_id) is None
    assert vault.caller_of(kept.call_id) == CALLER  # its recording is still kept
    assert vault.catalog.calls_by_caller("acme", vault.caller_hash("acme", OTHER)) == []


def test_a_rebuilt_audit_chain_is_caught_without_the_master_key(vault):
    from storage.catalog import GENESIS_HASH, audit_hash

    for n in range(4):
        vault.audit(actor="t", action="thing", target=str(n), detail={"reason": f"r{n}"})
    events = vault.catalog.audit_events()
    assert {e.alg for e in events} == {"hmac-sha256"}
    # Someone with write access to the database edits entry 2 and rebuilds every link after it,
    # once with plain SHA-256 and once with a key of their own: both are found.
    for forged_key, alg in ((None, "sha256"), (os.urandom(32), "hmac-sha256")):
        prev = GENESIS_HASH
        with vault.catalog.transaction() as db:
            for e in events:
                detail = {"reason": "forged"} if e.seq == 2 else e.detail
                link = audit_hash(
                    prev, e.at, e.actor, e.action, e.tenant, e.target, detail, forged_key
                )
                db.execute(
                    "UPDATE audit_events SET detail = ?, prev_hash = ?, hash = ?, alg = ?"
                    " WHERE seq = ?",
                    (json.dumps(detail, sort_keys=True), prev, link, alg, e.seq),
                )
                prev = link
        verdict = verify_catalog(vault.catalog)
        assert not verdict.ok, alg
        assert verdict.problems[0].seq == 1


def test_cli_sweep_keeps_call_records_as_the_configuration_says(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", base64.b64encode(MASTER).decode())
    data = tmp_path / "var"
    with Vault(data, fsync=False) as v:
        call = v.open_call(tenant="acme", platform="test", caller=OTHER)  # nothing recorded
    config = tmp_path / "ivr.toml"
    config.write_text("[retention]\ncall_record_days = 5\n")
    six_days = (datetime.now(UTC) + timedelta(days=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    base = ["retention", "sweep", "--data-dir", str(data), "--now", six_days, "--json"]
    assert main(base) == 0  # the default, 30 days: the number stays
    assert json.loads(capsys.readouterr().out)["calls_scrubbed"] == 0
    assert main([*base, "--config", str(config)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["calls_scrubbed"], out["call_record_days"]) == (1, 5)
    with Vault(data, create=False) as v:
        assert v.caller_of(call) is None
