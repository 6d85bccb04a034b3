"""The breach register: scopes, the Art. 34(3)(a) decision, reports, subjects, deadlines."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ivr.cli import main
from ivr.config import load_config
from ivr.gdpr import breach
from ivr.service import create_app
from storage.vault import Vault

MASTER = os.urandom(32)
A, B, C = "+46701111111", "+46702222222", "+46703333333"


def record(vault, caller, tenant="demo"):
    call = vault.open_call(tenant=tenant, platform="test", caller=caller)
    rec = vault.start_recording(
        tenant=tenant,
        call_id=call,
        lawful_basis="consent",
        purpose="quality",
        consent_evidence={"decision": "accepted"},
    )
    rec.append(0, 0, b"\x01" * 160)
    return rec.close()


@pytest.fixture
def data(tmp_path, monkeypatch):
    """Recordings of demo under key versions 1 and 2, and of a tenant holding its own key."""
    from storage.custody import generate_keypair

    monkeypatch.setenv("IVR_MASTER_KEY", base64.b64encode(MASTER).decode())
    _, public = generate_keypair()
    path = tmp_path / "var"
    with Vault(path, fsync=False, public_keys={"sealed": public}) as v:
        v1 = [record(v, A), record(v, A), record(v, B)]
        v.keyring.rotate("demo")
        v2 = [record(v, C)]
        own = [record(v, A, tenant="sealed")]
    return path, v1, v2, own


def open_cli(capsys, path, scope, *extra, detected="2026-11-28T08:00:00Z"):
    code = main(
        ["breach", "open", "--data-dir", str(path), "--detected-at", detected,
         "--description", "A laptop with a copy was stolen.", "--scope", scope, "--json", *extra]
    )  # fmt: skip
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else err)


def test_a_key_scope_covers_only_that_key_version(data, capsys):
    path, v1, _v2, _ = data
    code, b = open_cli(capsys, path, "key:demo:1")
    assert code == 0
    demo = b["assessment"]["controllers"]["demo"]
    assert sorted(demo["recordings"]) == sorted(r.id for r in v1)  # not v2's
    assert demo["subjects"] == 2  # A twice, and B
    assert demo["art34_3a_applies"] is False
    assert set(b["assessment"]["controllers"]) == {"demo"}
    assert b["deadline"] == "2026-12-01T08:00:00.000000Z"  # awareness + 72 h


def test_storage_only_qualifies_for_art_34_3_a(data, capsys):
    path, v1, v2, own = data
    code, b = open_cli(capsys, path, "storage")
    assert code == 0
    for tenant, c in b["assessment"]["controllers"].items():
        assert c["art34_3a_applies"] is True, tenant
        assert "encrypted" in c["art34_reason"]
    assert b["assessment"]["records"] == len(v1) + len(v2) + len(own)
    assert main(["breach", "subjects", b["id"], "--data-dir", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {}  # nobody needs telling


def test_a_tenant_holding_its_own_key_is_exempt_even_when_the_service_is_breached(data, capsys):
    path, *_ = data
    _code, b = open_cli(capsys, path, "window:2020-01-01T00:00:00Z/2030-01-01T00:00:00Z")
    controllers = b["assessment"]["controllers"]
    assert controllers["sealed"]["art34_3a_applies"] is True
    assert "private key" in controllers["sealed"]["art34_reason"]
    assert controllers["demo"]["art34_3a_applies"] is False


def test_report_subjects_and_close(data, capsys, tmp_path):
    path, _v1, *_ = data
    _, b = open_cli(capsys, path, "key:demo:1")
    args = ["--data-dir", str(path)]
    assert main(["breach", "report", b["id"], "--format", "json", *args]) == 0
    rep = json.loads(capsys.readouterr().out)["controllers"]["demo"]
    assert rep["dpo_contact"] == "dpo@demo.invalid" and rep["approximate_subjects"] == 2
    assert rep["approximate_records"] == 3 and rep["subjects_must_be_told"] is True
    assert "voice recordings of calls" in rep["categories_of_data"]
    assert any("--rewrap" in m for m in rep["measures"]) and rep["likely_consequences"]
    md = tmp_path / "report.md"
    assert main(["breach", "report", b["id"], "-o", str(md), *args]) == 0
    assert str(md) in capsys.readouterr().out
    text = md.read_text()
    assert "Art. 33(3)" in text and "Demo Contact Centre" in text and "CALLERS" not in text
    code = main(["breach", "subjects", b["id"], "--json", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out) == {"demo": sorted([A, B])}
    assert main(["breach", "close", b["id"], "--summary", "keys rotated, callers told", *args]) == 0
    capsys.readouterr()
    assert main(["breach", "close", b["id"], "--summary", "again", *args]) == 1
    assert "already closed" in capsys.readouterr().err
    with Vault(path, create=False) as v:
        actions = [e.action for e in v.catalog.audit_events() if e.target == b["id"]]
        assert actions == ["breach.opened", "breach.reported", "breach.reported",
                           "breach.subjects_exported", "breach.closed"]  # fmt: skip


@pytest.mark.parametrize(
    ("scope", "extra", "detected", "message"),
    [
        ("key:demo:9", (), "2026-11-28T08:00:00Z", "matches no recording"),
        ("tenant:nobody", (), "2026-11-28T08:00:00Z", "matches no recording"),
        ("recordings:rec_nope", (), "2026-11-28T08:00:00Z", "rec_nope"),
        ("bogus", (), "2026-11-28T08:00:00Z", "unknown scope"),
        ("window:2026-12-01T00:00:00Z/2026-11-01T00:00:00Z", (), "2026-11-28", "ends before"),
        ("key:demo:1", ("--keys-safe",), "2026-11-28T08:00:00Z", "contradicts"),
        ("storage", (), "2099-01-01T00:00:00Z", "in the future"),
    ],
)
def test_bad_breaches_are_refused_and_nothing_is_written(
    data, capsys, scope, extra, detected, message
):
    path, *_ = data
    code, err = open_cli(capsys, path, scope, *extra, detected=detected)
    assert code == 1 and message in err
    with Vault(path, create=False) as v:
        assert breach.all_breaches(v) == []


def test_unknown_breach_id(data, capsys):
    path, *_ = data
    assert main(["breach", "show", "brc_nope", "--data-dir", str(path)]) == 1
    assert "brc_nope" in capsys.readouterr().err


async def test_the_service_reports_overdue_breaches(data, caplog):
    path, *_ = data
    config = load_config(None)
    with Vault(path, create=False) as v:
        b = breach.open_breach(
            v,
            config,
            detected_at=datetime.now(UTC) - timedelta(hours=80),
            description="Backup tape lost.",
            scope=breach.parse_scope("storage"),
            actor="test",
        )
    app = create_app(config, path, fsync=False, sweep_interval=3600)
    async with TestClient(TestServer(app)) as client:
        health = await (await client.get("/healthz")).json()
    assert health["breaches"] == [{"id": b["id"], "urgency": "overdue", "deadline": b["deadline"]}]
    assert any(b["id"] in r.getMessage() and "overdue" in r.getMessage() for r in caplog.records)


def test_list_shows_time_left(data, capsys):
    path, *_ = data
    recent = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    open_cli(capsys, path, "storage", detected=recent)
    assert main(["breach", "list", "--data-dir", str(path), "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert item["urgency"] == "open" and 70 <= item["hours_left"] <= 71
