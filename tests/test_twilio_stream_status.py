"""A Twilio recording stream that never connects, or breaks, must not leave a recording that
looks complete; and SIP targets are dialled as SIP, sips: included."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from aiohttp.test_utils import TestServer

from ivr.config import load_config
from ivr.harness.twilio_sim import CallOptions, StreamStart, simulate_call
from ivr.platforms.twilio.messages import twiml_dial, twiml_record_and_dial
from ivr.service import create_app
from storage.catalog import RecordingStatus
from storage.vault import Vault

CONFIG = """
[tenants.acme]
display_name = "Acme"
dpo_contact = "dpo@acme.example"
[[lines]]
number = "+15550100001"
tenant = "acme"
purpose = "Handling orders"
lawful_basis = "consent"
forward_to = "+15550100099"
[[lines]]
number = "+15550100002"
tenant = "acme"
purpose = "Handling complaints"
lawful_basis = "legitimate_interests"
forward_to = "+15550100099"
"""


async def _call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, to: str, **kw):
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tok")
    (tmp_path / "ivr.toml").write_text(CONFIG)
    app = create_app(load_config(tmp_path / "ivr.toml"), tmp_path / "var", fsync=False)
    server = TestServer(app)
    await server.start_server()
    on_start_stream = kw.pop("on_start_stream", None)
    try:
        url = str(server.make_url("")).rstrip("/")
        options = CallOptions(url=url, auth_token="tok", to=to, fast=True, duration=6.0, **kw)
        result = await simulate_call(options, on_start_stream=on_start_stream)
    finally:
        await server.close()
    with Vault(tmp_path / "var", create=False) as vault:
        (row,) = vault.list()
    return result, row


async def test_a_recording_stream_twilio_reports_failed_leaves_a_failed_recording(
    tmp_path, monkeypatch
):
    # legitimate interests: recording starts at the hand-off, so nothing at all was stored.
    result, row = await _call(
        tmp_path, monkeypatch, "+15550100002", broken_streams=frozenset({"recording"})
    )
    assert result.error is None, result.transcript
    assert row.status is RecordingStatus.FAILED
    assert row.status_reason.startswith("the recording stream failed: connection failed")


async def test_consent_audio_before_a_failed_stream_is_kept_as_incomplete(tmp_path, monkeypatch):
    # consent: recording starts at the accept key, on the consent stream; the rest is missing.
    result, row = await _call(
        tmp_path,
        monkeypatch,
        "+15550100001",
        presses=[(2.0, "1")],
        broken_streams=frozenset({"recording"}),
    )
    assert result.error is None, result.transcript
    assert row.status is RecordingStatus.INCOMPLETE
    assert "the recording stream failed" in row.status_reason
    assert 0 < row.duration_ms < 6000  # the confirmation only, not the conversation


async def test_a_recording_stream_that_never_connects_is_noticed_without_a_callback(
    tmp_path, monkeypatch
):
    async def never_connects(start: StreamStart) -> None:
        return None  # the stream is handed over and nobody opens it; no callback comes

    result, row = await _call(tmp_path, monkeypatch, "+15550100002", on_start_stream=never_connects)
    assert result.error is None, result.transcript
    assert row.status is RecordingStatus.FAILED
    assert row.status_reason.startswith("the recording stream never connected")


async def test_a_working_recording_stream_stays_complete(tmp_path, monkeypatch):
    result, row = await _call(tmp_path, monkeypatch, "+15550100002")
    assert result.error is None, result.transcript
    assert row.status is RecordingStatus.COMPLETE and row.duration_ms >= 5000


@pytest.mark.parametrize(
    "target", ["sip:agent@pbx.example.com", "sips:agent@pbx.example.com;transport=tls"]
)
def test_sip_targets_are_dialled_as_sip(target):
    for twiml in (twiml_dial(target), twiml_record_and_dial("wss://x/s", {}, target, "https://x")):
        (dial,) = ET.fromstring(twiml.split("?>", 1)[1]).iter("Dial")
        (sip,) = dial.iter("Sip")
        assert sip.text == target and not (dial.text or "").strip()


def test_the_recording_stream_asks_for_status_callbacks():
    twiml = twiml_record_and_dial("wss://x/s", {"token": "t"}, "+15550100099", "https://x/cb")
    (stream,) = ET.fromstring(twiml.split("?>", 1)[1]).iter("Stream")
    assert stream.get("statusCallback") == "https://x/cb"
    assert stream.get("statusCallbackMethod") == "POST"


async def test_the_call_clock_starts_with_the_consent_stream_not_the_webhook(tmp_path, monkeypatch):
    from ivr.app_keys import CALLS

    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tok")
    (tmp_path / "ivr.toml").write_text(CONFIG)
    app = create_app(load_config(tmp_path / "ivr.toml"), tmp_path / "var", fsync=False)
    server = TestServer(app)
    await server.start_server()
    seen: list[tuple[str, bool]] = []

    def watch(entry) -> None:  # the simulator's transcript, as each line is written
        calls = app[CALLS].calls()
        if calls:
            seen.append((entry.text, calls[0].session is not None))

    try:
        url = str(server.make_url("")).rstrip("/")
        options = CallOptions(url=url, auth_token="tok", to="+15550100002", fast=True)
        result = await simulate_call(options, on_transcript=watch)
    finally:
        await server.close()
    assert result.error is None
    twiml = next(started for text, started in seen if "TwiML" in text)
    # The session (the call clock) begins when the consent stream's start is admitted: not at
    # the webhook, and by the time the caller hears the first prompt audio.
    stream = next(started for text, started in seen if "started (bidirectional" in text)
    heard = next(started for text, started in seen if "prompt audio" in text)
    assert (twiml, stream, heard) == (False, False, True)
    with Vault(tmp_path / "var", create=False) as vault:
        (row,) = vault.list()
    evidence = row.consent_evidence
    assert evidence["setup_seconds"] is not None and evidence["setup_seconds"] >= 0
    assert evidence["prompt_started_at"] == evidence["call_started_at"]
