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
from tests.stored_blobs import blob_bytes

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
    assert any(c.startswith("voice recordings of calls") for c in rep["categories_of_data"])
    assert any("--rewrap" in m for m in rep["measures_proposed"]) and rep["likely_consequences"]
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
        ("recordings:rec_nope", (), "2026-11-28T08:00:00Z", "never held recording(s) rec_nope"),
        ("storage", ("--measure", " "), "2026-11-28T08:00:00Z", "an empty --measure"),
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


# -- who is counted -------------------------------------------------------------------------------
D, E = "+46704444444", "+46705555555"


def called(path, caller, tenant="demo"):
    """A call nothing was recorded of (declined, objected, hung up): its row keeps the number."""
    with Vault(path, create=False) as v:
        return v.open_call(tenant=tenant, platform="test", caller=caller)


def test_callers_of_calls_not_recorded_are_counted_and_can_be_told(data, capsys):
    path, _v1, v2, _ = data
    called(path, D)  # after the rotation: sealed under key version 2, no recording
    called(path, A)  # A again, not recorded: A is still one person
    _, b = open_cli(capsys, path, "key:demo:2")
    demo = b["assessment"]["controllers"]["demo"]
    assert demo["recordings"] == [v2[0].id]
    assert demo["subjects"] == 3  # C recorded; D and A called, not recorded
    assert demo["subjects_without_recording"] == 2
    assert main(["breach", "subjects", b["id"], "--data-dir", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"demo": sorted([A, C, D])}
    _, b = open_cli(capsys, path, "tenant:demo")
    demo = b["assessment"]["controllers"]["demo"]
    assert (demo["subjects"], demo["subjects_by_number"], demo["records"]) == (4, 4, 4)
    _, b = open_cli(capsys, path, "key:demo:1")  # the new calls are not under version 1
    assert b["assessment"]["controllers"]["demo"]["subjects"] == 2


def test_a_tenant_with_calls_but_no_recordings_is_a_controller_to_notify(data, capsys):
    path, *_ = data
    called(path, E, tenant="quiet")
    _, b = open_cli(capsys, path, "window:2020-01-01T00:00:00Z/2030-01-01T00:00:00Z")
    quiet = b["assessment"]["controllers"]["quiet"]
    assert (quiet["subjects"], quiet["records"], quiet["call_records"]) == (1, 0, 1)
    assert [c["key"] for c in quiet["category_reasons"]] == ["numbers", "call_records"]


def test_imported_recordings_count_their_callers(data, capsys, tmp_path):
    import numpy as np
    import soundfile as sf

    from ivr.gdpr.recording_files import import_wav, load_for_import
    from ivr.policy import LawfulBasis

    path, *_ = data
    wav = tmp_path / "in.wav"
    sf.write(wav, np.zeros((800, 1), np.float32), 8000, subtype="PCM_16")
    with Vault(path, create=False) as v:
        for number in (None, E, A):  # without a number, a new one, one already counted
            import_wav(
                v, load_for_import(wav), tenant="demo", lawful_basis=LawfulBasis.CONTRACT,
                purpose="quality", actor="test", caller=number,
            )  # fmt: skip
    _, b = open_cli(capsys, path, "tenant:demo")
    demo = b["assessment"]["controllers"]["demo"]
    # A, B, C recorded; E imported with a number; A imported again; one import without one.
    assert demo["subjects"] == 5 and demo["records"] == 7
    assert (demo["subjects_by_number"], demo["subjects_unknown_number"]) == (4, 1)
    assert main(["breach", "report", b["id"], "--data-dir", str(path)]) == 0
    text = capsys.readouterr().out
    assert "data subjects:** 5 (4 known by their telephone number; 1 recording(s) of a" in text


# -- every breach is registered -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scope", "why"),
    [
        ("key:demo:9", "no caller number kept is sealed, under key version 9 of tenant demo"),
        ("tenant:nobody", "'nobody' is not a tenant in the configuration"),
        ("window:2020-01-01T00:00:00Z/2020-01-02T00:00:00Z", "began in the window"),
    ],
)
def test_a_breach_that_reaches_nobody_is_registered_and_says_why(data, capsys, scope, why):
    path, *_ = data
    code, b = open_cli(capsys, path, scope)
    assert code == 0, b
    a = b["assessment"]
    assert (a["controllers"], a["records"], a["subjects"]) == ({}, 0, 0)
    assert why in a["nobody_affected"]
    args = ["--data-dir", str(path)]
    assert main(["breach", "report", b["id"], "--json", *args]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["controllers"] == {} and rep["nobody_affected"] == a["nobody_affected"]
    assert main(["breach", "report", b["id"], *args]) == 0
    text = capsys.readouterr().out
    assert "Nobody's data is known to be affected" in text and "Art. 33(5)" in text
    assert why in text
    assert main(["breach", "list", "--json", *args]) == 0
    assert [x["id"] for x in json.loads(capsys.readouterr().out)] == [b["id"]]
    with Vault(path, create=False) as v:
        (opened,) = [e for e in v.catalog.audit_events() if e.action == "breach.opened"]
        assert opened.target == b["id"] and opened.detail["nobody_affected"] is True


def test_a_breach_of_a_recording_erased_since_is_registered(data, capsys):
    from storage.lifecycle import erase

    path, v1, *_ = data
    with Vault(path, create=False) as v:
        erase(v, v1[2].id, reason="caller asked", actor="test")
    code, b = open_cli(capsys, path, f"recordings:{v1[2].id}")
    assert code == 0, b
    assert f"{v1[2].id} is erased since" in b["assessment"]["nobody_affected"]
    assert "(caller asked)" in b["assessment"]["nobody_affected"]


# -- measures are the operator's ------------------------------------------------------------------
def test_a_report_without_measures_entered_says_so_and_claims_none(data, capsys):
    path, *_ = data
    _, b = open_cli(capsys, path, "key:demo:1")
    assert b["measures"] == []
    args = ["--data-dir", str(path)]
    assert main(["breach", "report", b["id"], "--json", *args]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["measures_taken"] == [] and rep["controllers"]["demo"]["measures_taken"] == []
    assert main(["breach", "report", b["id"], *args]) == 0
    text = capsys.readouterr().out
    assert breach.NO_MEASURES in text
    assert "rotated" not in text.split("**Measures proposed:**")[0]  # no fixed claim


def test_measures_are_what_the_operator_entered_stored_and_audited(data, capsys):
    path, *_ = data
    _, b = open_cli(
        capsys, path, "storage",
        "--measure", "Laptop remotely wiped.", "--measure", "Police report 2026-114.",
    )  # fmt: skip
    args = ["--data-dir", str(path)]
    assert [m["text"] for m in b["measures"]] == [
        "Laptop remotely wiped.",
        "Police report 2026-114.",
    ]
    assert (
        main(["breach", "measure", b["id"], "Staff retrained on disk encryption.", "--json", *args])
        == 0
    )
    taken = json.loads(capsys.readouterr().out)
    assert [m["text"] for m in taken][-1] == "Staff retrained on disk encryption."
    assert all(m["actor"].startswith("cli") and m["at"] for m in taken)
    assert main(["breach", "report", b["id"], "--json", *args]) == 0
    rep = json.loads(capsys.readouterr().out)
    for c in rep["controllers"].values():
        assert [m["text"] for m in c["measures_taken"]] == [m["text"] for m in taken]
    assert main(["breach", "report", b["id"], *args]) == 0
    text = capsys.readouterr().out
    assert "  - Laptop remotely wiped. (entered " in text and breach.NO_MEASURES not in text
    assert main(["breach", "measure", b["id"], " ", *args]) == 1
    assert "empty" in capsys.readouterr().err
    assert main(["breach", "measure", "brc_nope", "x", *args]) == 1
    assert "brc_nope" in capsys.readouterr().err
    with Vault(path, create=False) as v:
        added = [e.detail["measure"] for e in v.catalog.audit_events()
                 if e.target == b["id"] and e.action == "breach.measure_added"]  # fmt: skip
    assert added == [m["text"] for m in taken]


def test_measures_survive_an_old_catalog_being_migrated(data, capsys):
    """A catalog from before measures were stored (schema 5) gets the table; its breaches
    report no measure taken rather than an invented one."""
    import sqlite3

    path, *_ = data
    _, b = open_cli(capsys, path, "key:demo:1")
    db = sqlite3.connect(path / "catalog.sqlite3")
    # Schema 5: without what the migrations after it added (6: measures, 7: segments, 8: call
    # holders, 9: leases).
    db.executescript(
        "DROP TABLE breach_measures; DROP TABLE blob_segments; DROP TABLE processes;"
        " DROP TABLE leases;"
        " DROP INDEX calls_by_platform_id; DROP INDEX calls_open_held;"
        " ALTER TABLE calls DROP COLUMN owner; PRAGMA user_version = 5;"
    )
    db.close()
    assert main(["breach", "measure", b["id"], "Keys rotated.", "--data-dir", str(path)]) == 0
    capsys.readouterr()
    with Vault(path, create=False) as v:
        assert [m.text for m in breach.measures_of(v, b["id"])] == ["Keys rotated."]


# -- what each scope exposes ----------------------------------------------------------------------
def keys_of(controller):
    return [c["key"] for c in controller["category_reasons"]]


def test_a_storage_breach_lists_only_what_the_blob_files_hold(data, capsys):
    path, v1, *_ = data
    _, b = open_cli(capsys, path, "storage")
    for c in b["assessment"]["controllers"].values():
        assert not any("telephone" in x or "consent" in x for x in c["categories"])
        assert keys_of(c) == ["voice", "blob_facts"]
        assert all("encrypted" in x for x in c["categories"] if x.startswith("voice"))
    # The reason, checked against the files: no number or consent evidence in a blob, and the
    # recording's id and controller in clear.
    with Vault(path, create=False) as vault:
        blob = blob_bytes(vault, v1[0])
    for secret in (A.encode(), A[1:].encode(), b"accepted", b"decision"):
        assert secret not in blob
    assert v1[0].id.encode() in blob and b'"tenant_id":"demo"' in blob


def test_a_key_breach_lists_recordings_and_numbers_not_what_sits_in_clear(data, capsys):
    path, *_ = data
    _, b = open_cli(capsys, path, "key:demo:1")
    assert keys_of(b["assessment"]["controllers"]["demo"]) == ["voice", "numbers"]


def test_a_tenant_breach_lists_everything_it_holds(data, capsys):
    path, *_ = data
    _, b = open_cli(capsys, path, "tenant:demo")
    assert keys_of(b["assessment"]["controllers"]["demo"]) == [
        "voice", "blob_facts", "numbers", "call_records", "recording_metadata", "consent_evidence"
    ]  # fmt: skip


def test_the_scope_table_in_the_docs_is_the_one_the_register_uses():
    from pathlib import Path

    docs = (Path(__file__).parent.parent / "docs" / "gdpr.md").read_text()
    assert breach.scope_table_markdown() in docs
