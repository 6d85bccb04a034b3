"""``ivr vault migrate``: a single-node vault (SQLite, local blobs) into PostgreSQL and SeaweedFS,
served identically from there; resumed after an interruption; a tampered target reported; a
running vault or a foreign target refused (docs/migrate.md)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ivr.cli import main
from ivr.cluster_demo.postgres import PostgresServer
from ivr.gdpr import breach
from ivr.gdpr.recording_files import export_wav
from storage import lifecycle
from storage.audit import verify_catalog
from storage.catalog import RecordingStatus
from storage.migrate import MIGRATED, MIGRATED_IN, STARTED, migrate
from storage.vault import Vault
from tests.test_lifecycle import CALLER

MASTER = os.urandom(32)
PASSWORD = "s3cret-pw"  # trust authentication ignores it; it must never be printed or audited
SEALED_KEY = X25519PrivateKey.generate()


def run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _audio(rec: Any, seconds: float, seed: int) -> None:
    for i in range(int(seconds * 50)):
        rec.append(0, i * 20, bytes([(seed + i) % 256]) * 160)
        rec.append(1, i * 20 + 5, bytes([(seed * 7 + i) % 256]) * 160)


def make_source(data: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Tenants acme, beta and sealed (public-key custody); complete, incomplete, held, erased
    and discarded recordings; calls with callers; a breach with measures. The ids by role."""
    monkeypatch.setenv("IVR_MASTER_KEY", base64.b64encode(MASTER).decode())
    public = SEALED_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ids: dict[str, str] = {}
    with Vault(data, master_key=MASTER, fsync=False, public_keys={"sealed": public}) as vault:
        for n, tenant in enumerate(("acme", "beta", "acme", "sealed")):
            call = vault.open_call(tenant=tenant, platform="twilio", caller=CALLER)
            rec = vault.start_recording(
                tenant=tenant, lawful_basis="consent", purpose="quality", call_id=call
            )
            _audio(rec, 7.3 if n == 0 else 2.1, n)  # the first spans two segments
            ids[f"complete{n}"] = rec.close().id
            vault.end_call(call, ended_at="2026-12-01T00:00:00Z", outcome="completed")
        rec = vault.start_recording(tenant="beta", lawful_basis="contract", purpose="orders")
        _audio(rec, 3.0, 9)
        ids["incomplete"] = rec.close(failure="the media stream broke").id
        for role in ("held", "erased"):
            rec = vault.start_recording(tenant="acme", lawful_basis="consent", purpose="quality")
            _audio(rec, 1.5, 3)
            ids[role] = rec.close().id
        rec = vault.start_recording(tenant="acme", lawful_basis="consent", purpose="quality")
        _audio(rec, 1.0, 4)
        ids["discarded"] = rec.discard(reason="consent withdrawn").id
        lifecycle.set_hold(vault, ids["held"], reason="dispute", actor="test")
        lifecycle.erase(vault, ids["erased"], reason="asked", actor="test")
        assert vault.get(ids["incomplete"]).status is RecordingStatus.INCOMPLETE
    return ids


def open_breach(capsys: pytest.CaptureFixture[str], data: Path) -> str:
    code, out, err = run(
        capsys, "breach", "open", "--data-dir", data, "--detected-at", "2026-11-30T10:00:00Z",
        "--description", "a laptop was lost", "--scope", "storage", "--keys-safe",
        "--measure", "disk encryption confirmed", "--json",
    )  # fmt: skip
    assert code == 0, err
    breach_id = str(json.loads(out)["id"])
    code, _, err = run(capsys, "breach", "measure", breach_id, "DPO told", "--data-dir", data)
    assert code == 0, err
    return breach_id


def with_password(url: str) -> str:
    user, _, rest = url.removeprefix("postgresql://").partition("@")
    return f"postgresql://{user}:{PASSWORD}@{rest}"


def rows(vault: Vault, sql: str) -> list[dict[str, Any]]:
    return [{k: r[k] for k in r.keys()} for r in vault.catalog.query(sql)]  # noqa: SIM118


def test_a_vault_moves_to_postgresql_and_s3_and_reads_the_same(
    tmp_path: Path,
    postgres: PostgresServer,
    bucket: str,
    s3_env: dict[str, str],
    capsys,
    monkeypatch,
):
    data = tmp_path / "var"
    ids = make_source(data, monkeypatch)
    breach_id = open_breach(capsys, data)
    url, keys = postgres.database(), postgres.database("k")
    code, out, err = run(
        capsys, "vault", "migrate", "--data-dir", data, "--to-catalog", with_password(url),
        "--to-blobs", f"s3://{bucket}/vault", "--to-keyring", with_password(keys), "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert PASSWORD not in out + err and ":***@" in summary["target_catalog"]
    assert "key store" in summary["keyring"] and "(copied)" in summary["keyring"]
    assert summary["ok"] and summary["state"] == "new"
    assert (summary["recordings"], summary["copied"], summary["rows_only"]) == (8, 6, 2)
    assert (summary["verified"], summary["ciphertext_only"]) == (5, 1)
    assert summary["calls"] == 4 and summary["breaches"] == 1 and summary["breach_measures"] == 2
    assert err.count("migrate: ") == 8 and "8/8" in err

    # A second run finds it done: nothing copied, everything verified again.
    again_argv = ["vault", "migrate", "--data-dir", data, "--to-catalog", url]
    again_argv += ["--to-blobs", f"s3://{bucket}/vault", "--to-keyring", keys, "--json", "--quiet"]
    code, out, err = run(capsys, *again_argv)
    again = json.loads(out)
    assert code == 0 and again["state"] == "complete" and again["copied"] == 0, out + err
    assert "(present)" in again["keyring"]
    assert again["present"] == 6 and again["verified"] == 5 and err == ""

    # The target as a new node sees it: a data directory of its own, without keyring.json.
    node = tmp_path / "node"
    source = Vault(data, master_key=MASTER, fsync=False)
    target = Vault(node, master_key=MASTER, fsync=False, catalog_url=url, keyring_url=keys)
    try:
        # The target serves the same records: every recording, call, breach and measure.
        for rec in source.list():
            assert target.get(rec.id).public() == rec.public()
        for table in ("calls", "breaches", "breach_measures"):
            assert rows(target, f"SELECT * FROM {table} ORDER BY 1") == rows(
                source, f"SELECT * FROM {table} ORDER BY 1"
            )
        call = target.get(ids["complete0"]).call_id
        assert call is not None and target.caller_of(call) == CALLER
        assert target.catalog.calls_by_caller("acme", source.caller_hash("acme", CALLER))
        # Blobs live in the object store now, as segments; the erased one has none anywhere.
        assert target.get(ids["complete0"]).blob_path.startswith(f"s3://{bucket}/vault/")
        assert len(target.segments(ids["complete0"])) == 2
        erased = target.get(ids["erased"])
        assert erased.status is RecordingStatus.ERASED and erased.wrapped_dek is None
        assert not target.segments(ids["erased"]) and erased.blob_path is None
        store: Any = target.blob_store(target.get(ids["complete0"]).blob_path)
        assert store.listed(store.relpath("acme", ids["erased"])) == []
        assert store.listed(store.relpath("acme", ids["discarded"])) == []
        objects = s3_client(s3_env).list_objects_v2(Bucket=bucket)["Contents"]
        listed = target.catalog.query("SELECT COUNT(*) FROM blob_segments")[0][0]
        assert len(objects) == listed == 7
        assert target.get(ids["held"]).legal_hold

        # The audit chain: the source's, entry for entry, then the target's own entry.
        ours, theirs = source.catalog.audit_events(), target.catalog.audit_events()
        assert theirs[:-1] == ours and theirs[-1].action == MIGRATED_IN
        assert ours[-1].action == MIGRATED and [e.action for e in ours].count(STARTED) == 1
        assert verify_catalog(target.catalog).ok
        assert PASSWORD not in json.dumps([e.detail for e in theirs])
        assert (
            ours[-1].detail["copied"] == 6 and ours[-1].detail["to_blobs"] == f"s3://{bucket}/vault"
        )

        # Exports: the same WAV from either side (the sealed one with its private key).
        for role, rid in ids.items():
            if role in ("erased", "discarded"):
                continue
            key = SEALED_KEY if role == "complete3" else None
            a, b = tmp_path / f"{role}-source.wav", tmp_path / f"{role}-target.wav"
            export_wav(source, rid, a, actor="test", reason="compare", private_key=key)
            export_wav(target, rid, b, actor="test", reason="compare", private_key=key)
            assert a.read_bytes() == b.read_bytes(), role
    finally:
        source.close()
        target.close()

    # The command line on the target's configuration: the chain verifies.
    config = tmp_path / "target.toml"
    demo = Path(__file__).parents[2] / "ivr" / "demo.toml"
    storage = f'catalog_url = "{url}"\nkeyring_url = "{keys}"\nblob_url = "s3://{bucket}/vault"'
    config.write_text(demo.read_text() + f"\n[storage]\n{storage}\n")
    code, out, err = run(capsys, "audit", "verify", "--data-dir", node, "--config", config)
    assert code == 0 and "audit chain intact" in out, out + err

    # Both sides have been written to since (the exports are audited): the two have parted.
    code, out, err = run(capsys, *again_argv)
    assert code == 1 and "was migrated" in err, out + err

    # The target takes new rows after the copied ones: a breach measure numbered after theirs.
    with Vault(node, master_key=MASTER, fsync=False, catalog_url=url, keyring_url=keys) as target:
        after = breach.add_measures(target, breach_id, ["keys rotated"], actor="test")
        assert [m["text"] for m in after["measures"]][-1] == "keys rotated"
        assert [r["seq"] for r in rows(target, "SELECT seq FROM breach_measures ORDER BY seq")] == [
            1,
            2,
            3,
        ]


def s3_client(environ: dict[str, str]) -> Any:
    from storage.s3blobs import client_from_env

    return client_from_env(environ)


def hold_of(client: Any, bucket: str, key: str) -> str:
    try:
        return str(client.get_object_legal_hold(Bucket=bucket, Key=key)["LegalHold"]["Status"])
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchObjectLegalHold"
        return "none"


class Interrupted(Exception):
    pass


def test_an_interrupted_migration_resumes_and_completes(
    tmp_path: Path, postgres: PostgresServer, weed: Any, s3_env: dict[str, str], capsys, monkeypatch
):
    data = tmp_path / "var"
    ids = make_source(data, monkeypatch)
    # With Object Lock: the held recording's segments are held in the store as well.
    bucket = "m-" + os.urandom(8).hex()
    client = s3_client(s3_env)
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    url = postgres.database()
    blobs = f"s3://{bucket}/m"
    copied: list[str] = []

    def stop_after_two(done: int, total: int, recording_id: str, what: str) -> None:
        if what.startswith("copied"):
            copied.append(recording_id)
        if len(copied) == 2:
            raise Interrupted

    with (
        Vault(data, master_key=MASTER, fsync=False) as source,
        Vault(data, master_key=MASTER, fsync=False, catalog_url=url, blob_url=blobs) as target,
    ):
        with pytest.raises(Interrupted):
            migrate(source, target, actor="test", progress=stop_after_two)
        # The second one as if killed between its segments and its row: sent, not listed.
        first = target.segments(copied[1])[0].key
        with target.catalog.transaction() as db:
            db.execute("DELETE FROM blob_segments WHERE recording_id = ?", (copied[1],))
            db.execute("DELETE FROM recordings WHERE id = ?", (copied[1],))
        assert not target.catalog.audit_events()[-1].action.startswith("vault.migrated")

    argv = ["vault", "migrate", "--data-dir", data, "--to-catalog", url, "--to-blobs", blobs]
    # Other bytes where one of its segments goes: not overwritten, an error naming it.
    sent = client.get_object(Bucket=bucket, Key=first)["Body"].read()
    client.put_object(Bucket=bucket, Key=first, Body=b"x" + sent[1:])
    code, out, err = run(capsys, *argv, "--json")
    summary = json.loads(out)
    assert code == 1 and summary["state"] == "resumed", err
    assert [p["recording_id"] for p in summary["problems"]] == [copied[1]]
    assert "another writer's segment" in summary["problems"][0]["what"]
    assert summary["present"] == 1 and summary["copied"] == 4

    client.put_object(Bucket=bucket, Key=first, Body=sent)  # the segment it sent, back
    code, out, err = run(capsys, *argv, "--json")
    summary = json.loads(out)
    assert code == 0, err
    assert summary["state"] == "resumed" and summary["present"] == 5 and summary["copied"] == 1
    assert summary["verified"] + summary["ciphertext_only"] == 6
    with (
        Vault(data, master_key=MASTER, fsync=False) as source,
        Vault(data, master_key=MASTER, fsync=False, catalog_url=url, recover=False) as target,
    ):
        ours, theirs = source.catalog.audit_events(), target.catalog.audit_events()
        assert theirs[:-1] == ours and [e.action for e in ours].count(STARTED) == 3
        assert verify_catalog(target.catalog).ok
        held = target.segments(ids["held"])
        for rid in ids.values():
            assert target.get(rid).public() == source.get(rid).public()
        assert held and all(hold_of(client, bucket, s.key) == "ON" for s in held)
        others = target.segments(ids["complete0"])
        assert others and all(hold_of(client, bucket, s.key) == "none" for s in others)


def test_a_tampered_target_segment_is_reported(
    tmp_path: Path,
    postgres: PostgresServer,
    bucket: str,
    s3_env: dict[str, str],
    capsys,
    monkeypatch,
):
    data = tmp_path / "var"
    ids = make_source(data, monkeypatch)
    url = postgres.database()
    argv = ["vault", "migrate", "--data-dir", data, "--to-catalog", url]
    argv += ["--to-blobs", f"s3://{bucket}/t", "--json", "--quiet"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    with Vault(data, master_key=MASTER, fsync=False, catalog_url=url, recover=False) as target:
        key = target.segments(ids["complete1"])[0].key
    client = s3_client(s3_env)
    body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[-1] ^= 1
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body))

    code, out, err = run(capsys, *argv)
    summary = json.loads(out)
    assert code == 1 and not summary["ok"]
    assert [p["recording_id"] for p in summary["problems"]] == [ids["complete1"]]
    assert summary["problems"][0]["what"].startswith(
        "reading it from the target: chunk 2: authentication failed"
    )
    assert summary["verified"] == 4  # the others still verify
    code, out, err = run(capsys, *argv[:-2])  # in words, with progress
    assert code == 1 and out.startswith("migration NOT complete:\n")
    assert f"recording {ids['complete1']}: reading it from the target: chunk 2: " in out
    assert f"{ids['complete1']} FAILED: " in err and "8/8" in err


def test_a_running_vault_or_a_foreign_target_is_refused(
    tmp_path: Path,
    postgres: PostgresServer,
    bucket: str,
    s3_env: dict[str, str],
    capsys,
    monkeypatch,
):
    data = tmp_path / "var"
    make_source(data, monkeypatch)
    url = postgres.database()
    argv = ["vault", "migrate", "--data-dir", data, "--to-catalog", url]
    argv += ["--to-blobs", f"s3://{bucket}/r"]
    with Vault(data, master_key=MASTER, fsync=False) as running:
        rec = running.start_recording(tenant="acme", lawful_basis="consent", purpose="quality")
        code, _, err = run(capsys, *argv)
        assert code == 1 and "stop the service" in err
        rec.close()
    # Another vault's catalog: refused, and nothing written to it.
    other = tmp_path / "other"
    with Vault(other, fsync=False, catalog_url=url, environ={"IVR_MASTER_KEY": "42" * 32}) as v:
        v.audit(actor="test", action="test.marker")
    code, _, err = run(capsys, *argv)
    assert code == 1 and "another vault" in err, err
    with Vault(data, master_key=MASTER, fsync=False, catalog_url=url, recover=False) as target:
        assert [e.action for e in target.catalog.audit_events()] == ["test.marker"]
        assert not target.list()
    code, _, err = run(capsys, *argv[:-3], "sqlite:///x", "--to-blobs", f"s3://{bucket}/r")
    assert code == 1 and "postgresql://" in err
    # A key store holding another keyring: refused, the empty target catalog left empty.
    keys, empty = postgres.database("k"), postgres.database()
    environ = {"IVR_MASTER_KEY": "42" * 32}
    with Vault(tmp_path / "elsewhere", fsync=False, keyring_url=keys, environ=environ) as v:
        v.keyring.current("acme")  # its own tenant key, under its own master key
    argv = ["vault", "migrate", "--data-dir", data, "--to-catalog", empty, "--to-keyring", keys]
    code, _, err = run(capsys, *argv, "--to-blobs", f"s3://{bucket}/r")
    assert code == 1 and "holds another keyring" in err, err
    with Vault(data, master_key=MASTER, fsync=False, catalog_url=empty, recover=False) as target:
        assert not target.catalog.audit_events() and not target.list()
