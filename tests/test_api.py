"""The admin API: authentication, roles, every endpoint, and tenant isolation on each of them."""

from __future__ import annotations

import asyncio
import io
import logging
import zipfile
from datetime import timedelta

import aiohttp
import pytest
import soundfile as sf
from aiohttp import web
from aiohttp.test_utils import TestServer

from ivr.api import token_digest
from ivr.config import load_config
from ivr.service import VAULT, create_app
from storage.catalog import RecordingStatus

TOKENS = {
    "acme-dpo": ("acme", "dpo", None),
    "acme-supervisor": ("acme", "supervisor", None),
    "acme-admin": ("acme", "admin", None),
    "acme-expired": ("acme", "dpo", "2020-01-01"),
    "globex-dpo": ("globex", "dpo", None),
}
CALLER = "+46701234567"


def config_text() -> str:
    out = []
    for tenant in ("acme", "globex"):
        out.append(f'[tenants.{tenant}]\ndisplay_name = "{tenant.title()} AB"\n')
        out.append(f'dpo_contact = "dpo@{tenant}.example"\n')
    for i, tenant in enumerate(("acme", "globex")):
        out.append(
            f'[[lines]]\nnumber = "+4685000000{i}"\ntenant = "{tenant}"\npurpose = "quality"\n'
            'lawful_basis = "consent"\n'
        )
    for token, (tenant, role, expires) in TOKENS.items():
        out.append(
            f'[[api_tokens]]\ntenant = "{tenant}"\nname = "{token}"\nrole = "{role}"\n'
            f'token_sha256 = "{token_digest(token)}"\n'
            + (f"expires = {expires}\n" if expires else "")
        )
    return "".join(out)


def make_app(tmp_path, monkeypatch) -> web.Application:
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    path = tmp_path / "ivr.toml"
    path.write_text(config_text())
    return create_app(load_config(path), tmp_path / "var", fsync=False)


def add_recordings(app: web.Application) -> dict:
    """One 3-second recording per tenant, in a started app's vault."""
    vault = app[VAULT]
    recs = {}
    for tenant in ("acme", "globex"):
        call = vault.open_call(
            tenant=tenant, platform="test", platform_call_id=f"CA-{tenant}", caller=CALLER
        )
        rec = vault.start_recording(
            tenant=tenant,
            call_id=call,
            lawful_basis="consent",
            purpose="quality",
            tracks=("caller",),
            consent_evidence={"decision": "accepted", "language": "en"},
            retention_until=vault.clock() + timedelta(days=30),
        )
        for i in range(150):
            rec.append(0, i * 20, bytes([i % 256]) * 160)
        recs[tenant] = rec.close()
    return recs


@pytest.fixture
async def api(tmp_path, monkeypatch):
    app = make_app(tmp_path, monkeypatch)
    server = TestServer(app)
    await server.start_server()
    recs = add_recordings(app)
    async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as session:
        yield session, app, recs
    await server.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_openapi_document_describes_every_route(api):
    session, app, _ = api
    resp = await session.get("/api/v1/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None
        and r.resource.canonical.startswith("/api/v1")
        and r.method != "HEAD"
    }
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == described


@pytest.mark.parametrize(
    "headers",
    [{}, auth("nope"), auth("acme-expired"), {"Authorization": "Basic eDp5"}],
    ids=["none", "unknown", "expired", "not-bearer"],
)
async def test_bad_tokens_are_refused_and_audited(api, headers):
    session, app, recs = api
    resp = await session.get(f"/api/v1/recordings/{recs['acme'].id}", headers=headers)
    assert resp.status == 401 and "Bearer" in resp.headers["WWW-Authenticate"]
    # The API's own entries: the retention sweep started with the service may add its entry
    # at any moment beside them.
    events = [e for e in app[VAULT].catalog.audit_events() if e.action.startswith("api.")]
    assert events[-1].action == "api.show.denied" and events[-1].detail["status"] == 401


async def test_roles(api):
    session, _, recs = api
    rid = recs["acme"].id
    resp = await session.get(f"/api/v1/recordings/{rid}/audio?reason=x", headers=auth("acme-admin"))
    assert resp.status == 403
    resp = await session.delete(
        f"/api/v1/recordings/{rid}", json={"reason": "x"}, headers=auth("acme-supervisor")
    )
    assert resp.status == 403
    resp = await session.get(f"/api/v1/recordings/{rid}/audio", headers=auth("acme-supervisor"))
    assert resp.status == 400  # no reason given
    resp = await session.get(
        f"/api/v1/recordings/{rid}/audio?reason=quality review", headers=auth("acme-supervisor")
    )
    assert resp.status == 200 and resp.headers["Content-Type"] == "audio/wav"
    audio, rate = sf.read(io.BytesIO(await resp.read()), dtype="int16")
    assert rate == 8000 and len(audio) == 150 * 160
    resp = await session.get("/api/v1/retention", headers=auth("acme-admin"))
    assert resp.status == 200 and (await resp.json())["kept"] == 1


async def test_playback_is_audited_with_actor_and_reason(api):
    session, app, recs = api
    rid = recs["acme"].id
    await session.get(
        f"/api/v1/recordings/{rid}/audio?reason=complaint 42", headers=auth("acme-dpo")
    )
    event = [e for e in app[VAULT].catalog.audit_events() if e.action == "recording.exported"][-1]
    assert event.target == rid and event.detail["reason"] == "complaint 42"
    assert event.actor == "api:acme:acme-dpo:dpo"


async def test_a_download_cut_short_is_audited_as_such_not_a_traceback(
    tmp_path, monkeypatch, caplog
):
    """A client that goes away mid-download: the audit log says the export did not finish (how
    much was handed over, of how much), and the service logs one line, no aiohttp traceback."""
    caplog.set_level(logging.INFO)
    app = make_app(tmp_path, monkeypatch)
    left: list[str] = []
    finished: list[str] = []  # handlers finished: what they audit is in the log
    finishing = asyncio.Condition()

    @web.middleware
    async def client_leaves(request: web.Request, handler):
        if not request.path.endswith("/audio") or request.transport is None:
            return await handler(request)
        request.transport.close()  # as a client that left, seen from the server
        left.append(request.path)
        try:
            return await handler(request)
        finally:
            async with finishing:
                finished.append(request.path)
                finishing.notify_all()

    app.middlewares.append(client_leaves)
    server = TestServer(app)  # without handler cancellation, as ivr serve (tests/conftest.py)
    await server.start_server()
    rid = add_recordings(app)["acme"].id
    try:
        async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as session:
            with pytest.raises(aiohttp.ClientError):
                resp = await session.get(
                    f"/api/v1/recordings/{rid}/audio?reason=x", headers=auth("acme-dpo")
                )
                await resp.read()
        async with finishing:  # aiohttp's client may have tried the GET twice: both finished
            await finishing.wait_for(lambda: len(finished) == len(left))
        events = [e for e in app[VAULT].catalog.audit_events() if e.target == rid]
    finally:
        await server.close()
    started = [e for e in events if e.action == "recording.exported"]
    cut = [e for e in events if e.action == "recording.export_cut_short"]
    assert left and len(started) == len(cut) == len(left)
    size = 44 + 150 * 160 * 2  # WAV header + 3 s of 16-bit samples
    assert all(e.detail["bytes"] == size > e.detail["bytes_handed_over"] for e in cut)
    assert cut[0].actor == "api:acme:acme-dpo:dpo" and cut[0].detail["reason"] == "x"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("cut short" in r.getMessage() and rid in r.getMessage() for r in caplog.records)


async def test_list_show_hold_release_delete(api):
    session, app, recs = api
    rid = recs["acme"].id
    listing = await (await session.get("/api/v1/recordings", headers=auth("acme-dpo"))).json()
    assert [r["id"] for r in listing["recordings"]] == [rid]
    assert (
        await session.get("/api/v1/recordings?status=bogus", headers=auth("acme-dpo"))
    ).status == 400
    shown = await (await session.get(f"/api/v1/recordings/{rid}", headers=auth("acme-dpo"))).json()
    assert shown["lawful_basis"] == "consent" and "wrapped_dek" not in shown
    resp = await session.post(
        f"/api/v1/recordings/{rid}/hold", json={"reason": "litigation"}, headers=auth("acme-dpo")
    )
    assert resp.status == 200 and (await resp.json())["legal_hold"] is True
    resp = await session.delete(
        f"/api/v1/recordings/{rid}", json={"reason": "Art. 17"}, headers=auth("acme-dpo")
    )
    assert resp.status == 409 and "legal hold" in (await resp.json())["error"]
    resp = await session.delete(
        f"/api/v1/recordings/{rid}/hold", json={"reason": "closed"}, headers=auth("acme-dpo")
    )
    assert resp.status == 200
    resp = await session.delete(
        f"/api/v1/recordings/{rid}", json={"reason": "Art. 17"}, headers=auth("acme-dpo")
    )
    assert resp.status == 200 and (await resp.json())["status"] == "erased"
    assert app[VAULT].get(rid).wrapped_dek is None
    resp = await session.get(f"/api/v1/recordings/{rid}/audio?reason=x", headers=auth("acme-dpo"))
    assert resp.status == 409


async def test_delete_of_a_recording_in_progress_is_a_conflict(api):
    session, app, _ = api
    rec = app[VAULT].start_recording(tenant="acme", lawful_basis="consent", purpose="q")
    resp = await session.delete(
        f"/api/v1/recordings/{rec.id}", json={"reason": "x"}, headers=auth("acme-dpo")
    )
    assert resp.status == 409
    assert rec.close().status is RecordingStatus.COMPLETE


async def test_subject_requests(api):
    session, app, recs = api
    bad = await session.post(
        "/api/v1/subject/erase", json={"phone": "12", "reason": "x"}, headers=auth("acme-dpo")
    )
    assert bad.status == 400
    resp = await session.post(
        "/api/v1/subject/export",
        json={"phone": "0701234567", "region": "SE", "reason": "Art. 15"},
        headers=auth("acme-dpo"),
    )
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(await resp.read())) as zf:
        assert f"recordings/{recs['acme'].id}.wav" in zf.namelist()
        assert f"recordings/{recs['globex'].id}.wav" not in zf.namelist()
    resp = await session.post(
        "/api/v1/subject/erase",
        json={"phone": "+46 70 123 45 67", "reason": "Art. 17"},
        headers=auth("acme-dpo"),
    )
    erased = await resp.json()
    assert erased["erased"] == [recs["acme"].id]
    # The platform's call id left the catalog; the answer names it, to be erased there too.
    assert erased["platform_calls"] == [{"platform": "test", "id": "CA-acme"}]
    assert app[VAULT].get(recs["globex"].id).status is RecordingStatus.COMPLETE


# -- tenant isolation, endpoint by endpoint -------------------------------------------------------
async def test_no_token_of_one_tenant_sees_anything_of_another(api):
    session, app, recs = api
    theirs = recs["acme"].id
    globex = auth("globex-dpo")
    for method, path, kwargs in (
        ("GET", f"/api/v1/recordings/{theirs}", {}),
        ("GET", f"/api/v1/recordings/{theirs}/audio?reason=x", {}),
        ("DELETE", f"/api/v1/recordings/{theirs}", {"json": {"reason": "x"}}),
        ("POST", f"/api/v1/recordings/{theirs}/hold", {"json": {"reason": "x"}}),
        ("DELETE", f"/api/v1/recordings/{theirs}/hold", {"json": {"reason": "x"}}),
    ):
        resp = await session.request(method, path, headers=globex, **kwargs)
        assert resp.status == 404, (method, path)
        body = await resp.json()
        assert body == {"error": f"no recording {theirs}"}  # the same as for a missing id
    listing = await (await session.get("/api/v1/recordings", headers=globex)).json()
    assert [r["id"] for r in listing["recordings"]] == [recs["globex"].id]
    retention = await (await session.get("/api/v1/retention", headers=globex)).json()
    assert [r["id"] for r in retention["recordings"]] == [recs["globex"].id]
    export = await session.post(
        "/api/v1/subject/export", json={"phone": CALLER, "reason": "x"}, headers=globex
    )
    with zipfile.ZipFile(io.BytesIO(await export.read())) as zf:
        assert not any(recs["acme"].id in n for n in zf.namelist())
    erase = await session.post(
        "/api/v1/subject/erase", json={"phone": CALLER, "reason": "x"}, headers=globex
    )
    assert (await erase.json())["erased"] == [recs["globex"].id]
    row = app[VAULT].get(theirs)
    assert row.status is RecordingStatus.COMPLETE and not row.legal_hold


def test_config_refuses_plain_tokens_and_unknown_tenants(tmp_path):
    from ivr.config import ConfigError

    path = tmp_path / "ivr.toml"
    path.write_text(
        config_text()
        + '[[api_tokens]]\ntenant = "nobody"\nname = "x"\nrole = "boss"\ntoken = "secret"\n'
        'token_sha256 = "abc"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "api_tokens[5].token:" in text and "api_tokens[5].role:" in text
    assert "api_tokens[5].token_sha256:" in text
