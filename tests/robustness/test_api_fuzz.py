"""Fuzzer for the admin API's parameters (issue 12, point 7): query parameters, path ids and
JSON bodies, mutated from real requests and drawn from a fixed seed (``robustness_inputs``).
Whatever arrives: a documented answer (200, 400, 401, 403, 404, 409, 413), never a 500 or a
traceback, and the API still lists the recordings afterwards."""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import strategies as st

from ivr.api import token_digest
from ivr.config import load_config
from ivr.service import VAULT, create_app
from tests.robustness.test_twilio_fuzz import ANY_JSON, NUMBERISH, UNICODE_DIGITS, Errors, drawn

TOKEN = "fuzz-dpo"


@pytest.fixture
async def api(tmp_path, monkeypatch):
    errors = Errors()
    logging.getLogger().addHandler(errors)
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    path = tmp_path / "ivr.toml"
    path.write_text(
        '[tenants.acme]\ndisplay_name = "Acme"\ndpo_contact = "dpo@acme.example"\n'
        '[[lines]]\nnumber = "+46850000000"\ntenant = "acme"\npurpose = "quality"\n'
        'lawful_basis = "consent"\n'
        '[[api_tokens]]\ntenant = "acme"\nname = "dpo"\nrole = "dpo"\n'
        f'token_sha256 = "{token_digest(TOKEN)}"\n'
    )
    app = create_app(load_config(path), tmp_path / "var", fsync=False)
    server = TestServer(app)
    await server.start_server()
    vault = app[VAULT]
    call = vault.open_call(tenant="acme", platform="test", caller="+46701234567")
    rec = vault.start_recording(
        tenant="acme",
        call_id=call,
        lawful_basis="consent",
        purpose="quality",
        tracks=("caller",),
        retention_until=vault.clock() + timedelta(days=30),
    )
    for i in range(50):
        rec.append(0, i * 20, b"\x10" * 160)
    row = rec.close()
    try:
        async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as session:
            yield session, row.id
    finally:
        await server.close()
        logging.getLogger().removeHandler(errors)
    assert not errors.records, "\n".join(f"{r.name}: {r.getMessage()}" for r in errors.records)


TEXT = st.one_of(
    st.text(max_size=40), NUMBERISH.map(str), st.sampled_from([*UNICODE_DIGITS, "%ff", "\x00"])
)
BODY = st.one_of(
    st.dictionaries(
        st.sampled_from(["phone", "region", "reason", "language", "x"]),
        st.one_of(TEXT, ANY_JSON),
        max_size=4,
    ).map(json.dumps),
    st.integers(min_value=1, max_value=6000).map(lambda n: "[" * n),
    st.integers(min_value=1, max_value=6000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.sampled_from(['{"phone": NaN}', '{"reason": Infinity}', "", "null", "[]", "\ufeff{}"]),
    st.binary(max_size=60),
)
REQUEST = st.one_of(
    st.tuples(st.just("list"), st.dictionaries(st.sampled_from(["limit", "status"]), TEXT)),
    st.tuples(st.sampled_from(["show", "audio", "hold", "release", "delete"]), TEXT, TEXT, BODY),
    st.tuples(st.sampled_from(["erase", "export"]), BODY),
)


async def send(s: aiohttp.ClientSession, recording: str, request: tuple[Any, ...]) -> int:
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    kind = request[0]
    try:
        if kind == "list":
            resp = await s.get("/api/v1/recordings", params=request[1], headers=auth)
        elif kind in ("erase", "export"):
            body = request[1] if isinstance(request[1], bytes) else request[1].encode()
            resp = await s.post(f"/api/v1/subject/{kind}", data=body, headers=auth)
        else:
            _, rid, reason, body = request
            rid = quote(rid, safe="") or recording
            path = f"/api/v1/recordings/{rid}"
            data = body if isinstance(body, bytes) else body.encode()
            if kind == "show":
                resp = await s.get(path, headers=auth)
            elif kind == "audio":
                resp = await s.get(path + "/audio", params={"reason": reason}, headers=auth)
            elif kind == "hold":
                resp = await s.post(path + "/hold", data=data, headers=auth)
            elif kind == "release":
                resp = await s.delete(path + "/hold", data=data, headers=auth)
            else:
                resp = await s.delete(path, data=data, headers=auth)
        async with resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, UnicodeEncodeError, ValueError):
        return -1  # not sendable as given


async def test_api_parameters(api, robustness_inputs):
    s, recording = api
    statuses: Counter[int] = Counter()
    for request in drawn(REQUEST, robustness_inputs, at=1209):
        statuses[await send(s, recording, request)] += 1
    assert set(statuses) <= {-1, 200, 400, 401, 403, 404, 409, 413}, statuses
    resp = await s.get("/api/v1/recordings", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    assert recording in {r["id"] for r in (await resp.json())["recordings"]} or statuses[200]
