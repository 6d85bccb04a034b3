"""Calls end to end: the simulated Twilio against the real service, one test per consent path,
then every kind of bad input on the webhooks and the streams."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from xml.etree import ElementTree as ET

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from ivr.config import DEMO_TWILIO_AUTH_TOKEN, load_config
from ivr.harness.twilio_sim import CallOptions, simulate_call
from ivr.platforms.twilio.app import TWILIO
from ivr.platforms.twilio.signature import SIGNATURE_HEADER, compute_signature
from ivr.service import VAULT, create_app
from storage.catalog import RecordingStatus
from storage.vault import Vault
from tests.stored_blobs import blobs_of

CONSENT_LINE = "+15550100001"
OBJECTION_LINE = "+15550100002"
NOTICE_LINE = "+15550100003"
EMERGENCY_LINE = "+15550100004"
MESSAGE_LINE = "+15550100005"  # Swedish, opt_in, no forward_to: the caller is recorded here


async def call(url: str, to: str = CONSENT_LINE, **kw):
    options = CallOptions(url=url, to=to, fast=True, **kw)
    result = await simulate_call(options)
    assert result.error is None, result.transcript
    return result


def rows(app, call_sid: str):
    vault = app[VAULT]
    call_row = vault.catalog.query("SELECT id FROM calls WHERE platform_call_id = ?", (call_sid,))[
        0
    ]
    return [r for r in vault.list() if r.call_id == call_row["id"]]


# -- each consent path ----------------------------------------------------------------------------
async def test_opt_in_accept_records_both_tracks_with_evidence(service):
    app, url = service
    result = await call(url, presses=[(3.0, "1")], duration=4.0)
    assert result.decision == "accepted" and result.lawful_basis == "consent"
    assert result.recording_status == "complete"
    (row,) = rows(app, result.call_sid)
    assert row.id == result.recording_id and row.tracks == ("caller", "agent")
    ev = row.consent_evidence
    line = load_config(None).lines[CONSENT_LINE]
    prompt = app[TWILIO].calls.prompts.for_call(line, "twilio")["consent_request"]
    assert ev["decision"] == "accepted" and ev["key_pressed"] == "1"
    assert ev["prompt_sha256"] == prompt.sha256 and ev["prompt_text"] == prompt.text
    assert ev["prompt_played_in_full"] is False  # pressed during the prompt
    assert ev["policy_id"] == "demo-service-quality" and ev["language"] == "en"
    # Nothing from the consent stream before the key, and every recording-stream frame kept.
    stored = result.status_response["frames_stored"]
    assert stored >= result.frames_sent["outbound"] * 2 - 2
    assert result.status_response["frames_lost"] == 0
    with app[VAULT].open_reader(row.id) as reader:
        tracks = {f.track for f in reader.frames()}
    assert tracks == {0, 1}
    assert 3500 <= row.duration_ms <= 7000


async def test_opt_in_decline_records_nothing(service):
    app, url = service
    result = await call(url, presses=[(15.0, "9")])
    assert result.decision == "declined" and result.recording_id is None
    assert rows(app, result.call_sid) == []
    assert any("Dial" in line.text for line in result.transcript)  # still connected onwards


async def test_opt_in_silence_is_a_refusal(service):
    app, url = service
    result = await call(url)
    assert result.decision == "no_response" and result.recording_id is None
    assert rows(app, result.call_sid) == []


async def test_opt_out_objection(service):
    app, url = service
    result = await call(url, to=OBJECTION_LINE, presses=[(3.0, "9")])
    assert result.decision == "objected" and rows(app, result.call_sid) == []


async def test_opt_out_without_objection_records(service):
    app, url = service
    result = await call(url, to=OBJECTION_LINE, duration=3.0)
    assert result.decision == "not_objected" and result.recording_status == "complete"
    (row,) = rows(app, result.call_sid)
    assert row.lawful_basis == "legitimate_interests"


async def test_notice_records_and_ignores_keys(service):
    app, url = service
    result = await call(url, to=NOTICE_LINE, presses=[(2.0, "9")], duration=2.0)
    assert result.decision == "notified" and result.recording_status == "complete"
    assert rows(app, result.call_sid)[0].lawful_basis == "contract"


async def test_emergency_line_records_at_once(service):
    _, url = service
    result = await call(url, to=EMERGENCY_LINE, duration=2.0)
    assert result.decision == "not_asked" and result.recording_status == "complete"
    assert result.prompt_ms_received == 0


async def test_withdrawal_discards_the_recording(service):
    app, url = service
    result = await call(url, to=MESSAGE_LINE, presses=[(2.0, "1"), (10.0, "*")], hangup_at=30)
    assert result.decision == "accepted" and result.recording_status == "discarded"
    (row,) = rows(app, result.call_sid)
    assert row.status is RecordingStatus.DISCARDED and row.wrapped_dek is None
    assert row.consent_evidence["withdrawn_at"] is not None
    assert not blobs_of(app[VAULT], row.tenant, row.id)


async def test_message_line_records_the_caller_until_hang_up(service):
    app, url = service
    result = await call(url, to=MESSAGE_LINE, presses=[(2.0, "1")], hangup_at=12.0)
    assert result.decision == "accepted" and result.recording_status == "complete"
    (row,) = rows(app, result.call_sid)
    assert row.tracks == ("caller",) and 9000 <= row.duration_ms <= 10100


async def test_message_line_stops_at_the_maximum_and_hangs_up(service):
    app, url = service
    result = await call(url, to=MESSAGE_LINE, presses=[(1.0, "1")], hangup_at=400.0)
    (row,) = rows(app, result.call_sid)
    assert row.status is RecordingStatus.COMPLETE
    assert 299_000 <= row.duration_ms <= 300_100  # the line's max_recording_seconds is 300
    assert any("Hangup" in line.text for line in result.transcript)


async def test_hang_up_during_the_prompt(service):
    app, url = service
    result = await call(url, hangup_at=3.0)
    assert result.decision == "hung_up" and result.recording_id is None
    assert rows(app, result.call_sid) == []


# -- bad input: webhooks --------------------------------------------------------------------------
def form(to: str = CONSENT_LINE, call_sid: str | None = None) -> dict[str, str]:
    return {
        "CallSid": call_sid or "CA" + secrets.token_hex(16),
        "AccountSid": "AC" + "0" * 32,
        "From": "+46701234567",
        "To": to,
        "CallStatus": "ringing",
        "Direction": "inbound",
    }


async def post(session, url, path, data, *, token=DEMO_TWILIO_AUTH_TOKEN, sign=True):
    headers = {SIGNATURE_HEADER: compute_signature(token, url + path, data)} if sign else {}
    return await session.post(url + path, data=data, headers=headers)


async def test_webhooks_refuse_bad_signatures(service):
    _, url = service
    async with aiohttp.ClientSession() as s:
        for path in ("/twilio/voice", "/twilio/continue", "/twilio/status"):
            assert (await post(s, url, path, form(), sign=False)).status == 403
            assert (await post(s, url, path, form(), token="wrong")).status == 403
        signed_for_other = form()
        headers = {SIGNATURE_HEADER: compute_signature(DEMO_TWILIO_AUTH_TOKEN, url + "/x", {})}
        resp = await s.post(url + "/twilio/voice", data=signed_for_other, headers=headers)
        assert resp.status == 403


async def test_webhook_for_an_unknown_number_says_so_and_hangs_up(service):
    app, url = service
    async with aiohttp.ClientSession() as s:
        resp = await post(s, url, "/twilio/voice", form(to="+15559999999"))
        assert resp.status == 200 and resp.content_type == "text/xml"
        doc = ET.fromstring(await resp.text())
        assert [el.tag for el in doc] == ["Say", "Hangup"]
    assert app[TWILIO].counters["calls_unknown_number"] == 1


async def test_malformed_webhook_is_a_400(service):
    _, url = service
    async with aiohttp.ClientSession() as s:
        bad = form()
        bad["CallSid"] = "not-a-sid"
        assert (await post(s, url, "/twilio/voice", bad)).status == 400
        del bad["CallSid"]
        assert (await post(s, url, "/twilio/voice", bad)).status == 400


async def test_continue_and_status_for_unknown_calls(service):
    _, url = service
    async with aiohttp.ClientSession() as s:
        resp = await post(s, url, "/twilio/continue", form())
        assert resp.status == 200 and "<Hangup" in await resp.text()
        resp = await post(s, url, "/twilio/status", {**form(), "CallStatus": "completed"})
        assert resp.status == 200 and (await resp.json())["known"] is False


# -- bad input: streams ---------------------------------------------------------------------------
async def start_call(s, url, to=CONSENT_LINE):
    data = form(to)
    resp = await post(s, url, "/twilio/voice", data)
    doc = ET.fromstring(await resp.text())
    stream = doc.find("Connect/Stream")
    token = stream.find("Parameter").get("value")
    return data, stream.get("url"), token


def start_msg(call_sid, token, seq=1, tracks=("inbound",)):
    sid = "MZ" + secrets.token_hex(16)
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": str(seq),
            "streamSid": sid,
            "start": {
                "accountSid": "AC" + "0" * 32,
                "callSid": call_sid,
                "streamSid": sid,
                "tracks": list(tracks),
                "customParameters": {"token": token} if token else {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def media_msg(seq, ts, payload=b"\xff" * 160, track="inbound"):
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "media": {
                "track": track,
                "chunk": str(seq),
                "timestamp": str(ts),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


async def closed_with(ws) -> int | None:
    while True:
        msg = await asyncio.wait_for(ws.receive(), 5)
        if msg.type == aiohttp.WSMsgType.CLOSE:
            return msg.data  # the code the server sent, before any local reinterpretation
        if msg.type == aiohttp.WSMsgType.CLOSED:
            return ws.close_code


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda data, token: None, "no stream token"),
        (lambda data, token: "v1.consent.9999999999.forged", "does not belong"),
        (lambda data, token: token.replace("consent", "recording"), "cannot open"),
    ],
)
async def test_consent_stream_refuses_bad_tokens(service, make_token, reason):
    _, url = service
    async with aiohttp.ClientSession() as s:
        data, ws_url, token = await start_call(s, url)
        async with s.ws_connect(ws_url) as ws:
            await ws.send_str(start_msg(data["CallSid"], make_token(data, token)))
            assert await closed_with(ws) == 1008


async def test_a_token_works_once_and_for_its_own_call(service):
    _, url = service
    async with aiohttp.ClientSession() as s:
        data, ws_url, token = await start_call(s, url)
        other, _, _ = await start_call(s, url)
        async with s.ws_connect(ws_url) as ws:  # another call's token
            await ws.send_str(start_msg(other["CallSid"], token))
            assert await closed_with(ws) == 1008
        async with s.ws_connect(ws_url) as first:
            await first.send_str(start_msg(data["CallSid"], token))
            msg = await first.receive()
            assert json.loads(msg.data)["event"] == "media"  # the prompt starts
            async with s.ws_connect(ws_url) as replay:
                await replay.send_str(start_msg(data["CallSid"], token))
                assert await closed_with(replay) == 1008


async def test_a_stream_that_never_starts_is_closed(service, monkeypatch):
    monkeypatch.setattr("ivr.platforms.twilio.app.START_TIMEOUT_SECONDS", 0.05)
    _, url = service
    async with aiohttp.ClientSession() as s:
        _, ws_url, _ = await start_call(s, url)
        async with s.ws_connect(ws_url) as ws:
            await ws.send_str(json.dumps({"event": "connected", "protocol": "Call"}))
            assert await closed_with(ws) == 1008


async def test_messages_before_start_close_the_stream(service):
    _, url = service
    async with aiohttp.ClientSession() as s:
        _, ws_url, _ = await start_call(s, url)
        async with s.ws_connect(ws_url) as ws:
            await ws.send_str(media_msg(1, 0))
            assert await closed_with(ws) == 1002


async def test_oversized_message_closes_with_1009(service):
    _, url = service
    async with aiohttp.ClientSession() as s:
        data, ws_url, token = await start_call(s, url)
        async with s.ws_connect(ws_url) as ws:
            await ws.send_str(start_msg(data["CallSid"], token))
            await ws.send_str("x" * 70_000)
            assert await closed_with(ws) == 1009


async def test_garbage_is_dropped_and_the_call_goes_on(service):
    app, url = service
    async with aiohttp.ClientSession() as s:
        data, ws_url, token = await start_call(s, url)
        async with s.ws_connect(ws_url) as ws:
            await ws.send_str(start_msg(data["CallSid"], token))
            await ws.send_str("{not json")
            await ws.send_str(json.dumps({"event": "media", "sequenceNumber": "2"}))
            await ws.send_str(
                json.dumps(
                    {
                        "event": "media",
                        "sequenceNumber": "3",
                        "media": {"payload": "@@@", "timestamp": "0"},
                    }
                )
            )
            await ws.send_str(json.dumps({"event": "something-new", "sequenceNumber": "4"}))
            await ws.send_str(media_msg(5, 0))
            await ws.send_str(media_msg(5, 0))  # duplicate
            await ws.send_str(media_msg(4, 0))  # out of order
            await ws.send_str(
                json.dumps({"event": "dtmf", "sequenceNumber": "6", "dtmf": {"digit": "1"}})
            )
            seq = 7
            async for msg in ws:  # play the part of Twilio: echo marks, keep the media going
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                event = json.loads(msg.data)
                if event["event"] == "mark":
                    await ws.send_str(json.dumps({**event, "sequenceNumber": str(seq)}))
                    seq += 1
            assert ws.close_code == 1000  # accepted, prompt played, handed off
        counters = app[TWILIO].counters
        assert counters["messages_bad"] == 3 and counters["messages_unknown"] == 1
        assert counters["messages_out_of_order"] == 2
        session = app[TWILIO].call(data["CallSid"]).session
        assert session.decision.value == "accepted"
        resp = await post(s, url, "/twilio/status", {**data, "CallStatus": "completed"})
        summary = await resp.json()
        assert summary["decision"] == "accepted" and summary["recording_status"] == "complete"


async def test_socket_closed_mid_prompt_ends_the_call(service):
    app, url = service
    async with aiohttp.ClientSession() as s:
        data, ws_url, token = await start_call(s, url)
        async with s.ws_connect(ws_url) as ws:
            await ws.send_str(start_msg(data["CallSid"], token))
            await ws.receive()  # prompt audio is flowing; now the connection drops
        for _ in range(100):
            session = app[TWILIO].call(data["CallSid"]).session
            if session.ended:
                break
            await asyncio.sleep(0.01)
        assert session.ended and session.decision.value == "hung_up"


async def test_recording_stream_needs_an_allowed_call(service):
    _, url = service
    async with aiohttp.ClientSession() as s:
        result = await call(url, presses=[(15.0, "9")])  # declined: no recording token issued
        assert result.decision == "declined"
        data, ws_url, token = await start_call(s, url)
        rec_url = ws_url.replace("/consent", "/recording")
        async with s.ws_connect(rec_url) as ws:  # a consent token cannot open it either
            await ws.send_str(start_msg(data["CallSid"], token, tracks=("inbound", "outbound")))
            assert await closed_with(ws) == 1008


async def test_one_broken_call_does_not_disturb_another(service):
    _, url = service

    async def vandal():
        async with aiohttp.ClientSession() as s:
            for _ in range(5):
                data, ws_url, token = await start_call(s, url)
                async with s.ws_connect(ws_url) as ws:
                    await ws.send_str(start_msg(data["CallSid"], token))
                    await ws.send_str("x" * 70_000)
                    await closed_with(ws)

    good, _ = await asyncio.gather(call(url, presses=[(2.0, "1")], duration=3.0), vandal())
    assert good.decision == "accepted" and good.recording_status == "complete"
    assert good.status_response["frames_lost"] == 0


async def test_shutdown_finalises_open_recordings(tmp_path, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    app = create_app(load_config(None), tmp_path, fsync=False)
    server = TestServer(app)
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as s:
        data, ws_url, token = await start_call(s, url, to=EMERGENCY_LINE)
        ws = await s.ws_connect(ws_url)
        await ws.send_str(start_msg(data["CallSid"], token))
        for seq in range(2, 120):
            await ws.send_str(media_msg(seq, (seq - 2) * 20))
        for _ in range(100):
            if app[VAULT].open_recordings:
                break
            await asyncio.sleep(0.01)
        await server.close()  # SIGTERM path: shutdown hooks, then the vault closes
        await ws.close()
    from storage.vault import Vault

    with Vault(tmp_path, create=False) as vault:
        statuses = {r.status for r in vault.list()}
    assert statuses == {RecordingStatus.COMPLETE}


async def test_logs_carry_ids_never_numbers(service, caplog):
    _, url = service
    caplog.set_level(logging.DEBUG)
    caller = "+46701234567"
    await call(url, presses=[(2.0, "1")], duration=2.0, from_=caller)
    await call(url, to="+15559999999")  # unknown number
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "call_" in text  # the call ids are there
    for number in (caller, caller[1:], CONSENT_LINE, CONSENT_LINE[1:], "+15559999999"):
        assert number not in text


async def test_a_tenants_own_prompt_is_played_and_evidenced(tmp_path, monkeypatch):
    import numpy as np
    import soundfile as sf

    from media.prompts import load_prompt

    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    t = np.arange(44100 * 3) / 44100
    sf.write(tmp_path / "ours.wav", 0.4 * np.sin(2 * np.pi * 500 * t), 44100)  # any rate
    text = (
        "Hello, this is Acme. We would like to record this call for quality, with your consent."
        " Press 1 to allow recording, 9 to decline. Once you are connected, ask the agent to stop"
        " it, and what was recorded will be deleted."
    )
    config = tmp_path / "ivr.toml"
    config.write_text(
        '[tenants.acme]\ndisplay_name = "Acme"\ndpo_contact = "dpo@acme.example"\n'
        '[tenants.acme.prompts.en.consent_request]\nfile = "ours.wav"\n'
        f'text = "{text}"\n'
        'promise = { lawful_basis = "consent", purpose = "quality", withdraw = "agent", '
        'deletes_on_withdraw = true, accept_key = "1", decline_key = "9" }\n'
        '[[lines]]\nnumber = "+15550100001"\ntenant = "acme"\npurpose = "quality"\n'
        'lawful_basis = "consent"\nforward_to = "+15550100099"\nplatforms = ["twilio"]\n'
    )
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tok")
    app = create_app(load_config(config), tmp_path / "var", fsync=False)
    server = TestServer(app)
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        result = await simulate_call(
            CallOptions(url=url, auth_token="tok", presses=[(4.0, "1")], fast=True)
        )
    finally:
        await server.close()
    ours = load_prompt(tmp_path / "ours.wav", prompt_id="consent_request", language="en", text=text)
    assert result.decision == "accepted"
    with Vault(tmp_path / "var", create=False) as vault:
        (row,) = vault.list()
    assert row.consent_evidence["prompt_sha256"] == ours.sha256
    assert row.consent_evidence["prompt_text"] == text
    assert ours.duration_ms == 3000  # resampled from 44.1 kHz, one 20 ms frame per 160 bytes
