"""Withdrawal where keys cannot reach us: on a Twilio forwarded line the caller asks the agent,
who stops the recording through the admin API; end to end through the Twilio simulator."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from ivr.app_keys import CALLS
from ivr.config import load_config
from ivr.harness.twilio_sim import CallOptions, simulate_call
from ivr.service import create_app
from storage.catalog import RecordingStatus
from storage.vault import Vault

TOKENS = {"agent": "agent-token-1", "admin": "admin-token-1", "other": "other-token-1"}


def _config(tmp_path: Path, *, discard: bool = True) -> Path:
    tokens = "".join(
        f'[[api_tokens]]\ntenant = "{tenant}"\nname = "{name}"\nrole = "{role}"\n'
        f'token_sha256 = "{hashlib.sha256(TOKENS[name].encode()).hexdigest()}"\n'
        for name, tenant, role in (
            ("agent", "acme", "agent"),
            ("admin", "acme", "admin"),
            ("other", "globex", "agent"),
        )
    )
    path = tmp_path / "ivr.toml"
    path.write_text(
        '[tenants.acme]\ndisplay_name = "Acme"\ndpo_contact = "dpo@acme.example"\n'
        '[tenants.globex]\ndisplay_name = "Globex"\ndpo_contact = "dpo@globex.example"\n'
        '[[lines]]\nnumber = "+15550100001"\ntenant = "acme"\npurpose = "Handling orders"\n'
        'lawful_basis = "consent"\nforward_to = "+15550100099"\n'
        f"discard_on_withdraw = {'true' if discard else 'false'}\n" + tokens
    )
    return path


async def _service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> TestServer:
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tok")
    app = create_app(load_config(_config(tmp_path, **kw)), tmp_path / "var", fsync=False)
    server = TestServer(app)
    await server.start_server()
    return server


async def _withdraw(server: TestServer, token: str, answers: list[tuple[int, dict[str, Any]]]):
    (call,) = server.app[CALLS].calls()
    url = str(server.make_url(f"/api/v1/calls/{call.call_id}/withdraw"))
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            url, json={"note": "caller asked"}, headers={"Authorization": f"Bearer {token}"}
        )
        answers.append((resp.status, await resp.json()))


async def _call(server: TestServer, *actions: Any) -> Any:
    url = str(server.make_url("")).rstrip("/")
    return await simulate_call(
        CallOptions(
            url=url,
            auth_token="tok",
            presses=[(2.0, "1")],
            duration=20.0,
            fast=True,
            agent_actions=[(t, action) for t, action in actions],
        )
    )


@pytest.mark.parametrize("discard", [True, False])
async def test_the_agent_stops_the_recording_on_a_twilio_forwarded_line(
    tmp_path, monkeypatch, discard
):
    server = await _service(tmp_path, monkeypatch, discard=discard)
    answers: list[tuple[int, dict[str, Any]]] = []
    try:
        result = await _call(server, (15.0, lambda: _withdraw(server, TOKENS["agent"], answers)))
    finally:
        await server.close()
    assert result.error is None, result.transcript
    ((status, answer),) = answers
    assert status == 200 and answer["withdrawn"] is True
    expected = RecordingStatus.DISCARDED if discard else RecordingStatus.COMPLETE
    assert answer["recording_status"] == expected.value
    with Vault(tmp_path / "var", create=False) as vault:
        (row,) = vault.list()
        events = vault.catalog.audit_events()
    assert row.status is expected
    evidence = row.consent_evidence
    assert evidence["withdrawn_by"] == "agent"
    assert evidence["keys"]["withdraw_via"] == "agent" and evidence["keys"]["withdraw"] is None
    # Twilio cannot play after the hand-off: the agent tells the caller; nothing claims a prompt.
    assert "recording_stopped" not in [p["prompt_id"] for p in evidence["prompts_played"]]
    # What the caller was told: ask the agent, and what then happens to the recording.
    assert "tell the person you speak with" in evidence["prompt_text"]
    assert ("deleted" in evidence["prompt_text"]) is discard
    if not discard:  # kept: what was recorded ends where the agent stopped it
        assert 12_000 <= row.duration_ms <= 14_000
    audit = [e for e in events if e.action == "api.withdraw"]
    assert audit and audit[-1].detail["note"] == "caller asked"
    assert audit[-1].actor == "api:acme:agent:agent"


async def test_withdrawal_is_refused_to_other_tenants_other_roles_and_idle_calls(
    tmp_path, monkeypatch
):
    server = await _service(tmp_path, monkeypatch)
    answers: list[tuple[int, dict[str, Any]]] = []
    try:
        result = await _call(
            server,
            (14.0, lambda: _withdraw(server, TOKENS["other"], answers)),  # globex: not theirs
            (15.0, lambda: _withdraw(server, TOKENS["admin"], answers)),  # admin: not allowed
            (16.0, lambda: _withdraw(server, TOKENS["agent"], answers)),
            (17.0, lambda: _withdraw(server, TOKENS["agent"], answers)),  # already stopped
        )
    finally:
        await server.close()
    assert result.error is None
    assert [status for status, _ in answers] == [404, 403, 200, 409]
    assert "nothing is being recorded" in answers[3][1]["error"]
    with Vault(tmp_path / "var", create=False) as vault:
        denied = [e.action for e in vault.catalog.audit_events()]
    assert "api.withdraw.refused" in denied and "api.withdraw.denied" in denied
