"""Twilio wire format: signatures (against Twilio's own validator), TwiML, stream messages."""

from __future__ import annotations

import base64
import contextlib
import json
from xml.etree import ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from ivr.platforms.twilio.messages import (
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CallWebhook,
    Connected,
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    StreamError,
    Unknown,
    WebhookError,
    clear_message,
    mark_message,
    media_message,
    parse_stream_message,
    play_mark,
    played,
    twiml_consent_stream,
    twiml_dial,
    twiml_record_and_dial,
    twiml_say_hangup,
)
from ivr.platforms.twilio.signature import compute_signature, is_valid_signature, url_variants
from ivr.platforms.twilio.stream_token import KEY_PURPOSE, StreamTokens, TokenError
from storage.vault import Vault

CALL = "CA" + "a" * 32
ACCOUNT = "AC" + "b" * 32
STREAM = "MZ" + "c" * 32

# -- signatures -----------------------------------------------------------------------------------
form_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)


@settings(max_examples=200, deadline=None)
@given(
    token=st.text(alphabet="abcdef0123456789", min_size=8, max_size=32),
    path=st.sampled_from(["/twilio/voice", "/twilio/status?x=1&y=2", "/a%20b"]),
    params=st.dictionaries(
        st.text(alphabet="ABCDEFGHabcdefgh_", min_size=1, max_size=8), form_values
    ),
)
def test_signature_matches_twilios_request_validator(token, path, params):
    url = "https://ivr.example.com" + path
    ours = compute_signature(token, url, params)
    validator = RequestValidator(token)
    assert ours == validator.compute_signature(url, params)
    assert validator.validate(url, params, ours)
    assert is_valid_signature(token, url, params, validator.compute_signature(url, params))


def test_signature_accepts_the_default_port_either_way():
    params = {"CallSid": CALL, "To": "+15550100001"}
    with_port = compute_signature("tok", "https://ivr.example.com:443/twilio/voice", params)
    assert is_valid_signature("tok", "https://ivr.example.com/twilio/voice", params, with_port)
    without = compute_signature("tok", "http://ivr.example.com/twilio/voice", params)
    assert is_valid_signature("tok", "http://ivr.example.com:80/twilio/voice", params, without)
    assert url_variants("https://h:8443/x") == ["https://h:8443/x"]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda u, p, s, t: (u, {**p, "To": "+15550100002"}, s, t),
        lambda u, p, s, t: (u + "?x=1", p, s, t),
        lambda u, p, s, t: (u, p, s[:-2] + "AA", t),
        lambda u, p, s, t: (u, p, s, "other-token"),
        lambda u, p, s, t: (u, p, None, t),
        lambda u, p, s, t: (u, p, s, ""),
    ],
    ids=["param", "url", "signature", "token", "missing", "no-token"],
)
def test_signature_rejects_anything_changed(mutate):
    url, params = "https://ivr.example.com/twilio/voice", {"CallSid": CALL, "To": "+15550100001"}
    sig = compute_signature("tok", url, params)
    u, p, s, t = mutate(url, params, sig, "tok")
    assert not is_valid_signature(t, u, p, s)


# -- webhooks and TwiML ---------------------------------------------------------------------------
def test_webhook_form_is_validated():
    form = {"CallSid": CALL, "AccountSid": ACCOUNT, "From": "+46701234567", "To": "+1555"}
    assert CallWebhook.from_form(form).call_sid == CALL
    for bad in (
        {**form, "CallSid": "CA123"},
        {k: v for k, v in form.items() if k != "To"},
        {**form, "AccountSid": "nope"},
        {**form, "CallDuration": "12s"},
    ):
        with pytest.raises(WebhookError):
            CallWebhook.from_form(bad)


def test_consent_twiml():
    doc = ET.fromstring(
        twiml_consent_stream("wss://h/twilio/stream/consent", {"token": "t&<"}, "https://h/c")
    )
    assert doc.tag == "Response"
    connect, redirect = list(doc)
    assert connect.tag == "Connect" and redirect.tag == "Redirect"
    (stream,) = list(connect)
    assert stream.get("url") == "wss://h/twilio/stream/consent"
    assert [(p.get("name"), p.get("value")) for p in stream] == [("token", "t&<")]
    assert redirect.get("method") == "POST" and redirect.text == "https://h/c"


def test_record_and_dial_twiml():
    doc = ET.fromstring(
        twiml_record_and_dial("wss://h/r", {"token": "x"}, "+15550100099", "https://h/status")
    )
    start, dial = list(doc)
    (stream,) = list(start)
    assert stream.get("track") == "both_tracks"
    assert dial.tag == "Dial" and dial.text == "+15550100099"
    sip = ET.fromstring(twiml_dial("sip:agents@pbx.example.com"))
    assert sip.find("Dial/Sip").text == "sip:agents@pbx.example.com"
    say = ET.fromstring(twiml_say_hangup("Goodbye & <thanks>"))
    assert say.find("Say").text == "Goodbye & <thanks>" and say.find("Hangup") is not None


# -- stream messages ------------------------------------------------------------------------------
def msg(**fields) -> str:
    return json.dumps(fields)


def test_parses_each_event():
    assert parse_stream_message(msg(event="connected", protocol="Call", version="1.0.0")) == (
        Connected("Call", "1.0.0")
    )
    start = parse_stream_message(
        msg(
            event="start",
            sequenceNumber="1",
            streamSid=STREAM,
            start={
                "accountSid": ACCOUNT,
                "callSid": CALL,
                "streamSid": STREAM,
                "tracks": ["inbound", "outbound"],
                "customParameters": {"token": "abc"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        )
    )
    assert isinstance(start, Start) and start.parameters == {"token": "abc"}
    assert start.tracks == ("inbound", "outbound") and start.sequence == 1
    payload = base64.b64encode(b"\xff" * 160).decode()
    media = parse_stream_message(
        msg(
            event="media",
            sequenceNumber="3",
            streamSid=STREAM,
            media={"track": "outbound", "chunk": "2", "timestamp": "40", "payload": payload},
        )
    )
    assert media == Media(3, "outbound", 40, b"\xff" * 160)
    assert parse_stream_message(
        msg(event="dtmf", sequenceNumber="4", dtmf={"track": "inbound_track", "digit": "*"})
    ) == Dtmf(4, "*")
    assert parse_stream_message(msg(event="mark", sequenceNumber=5, mark={"name": "p"})) == Mark(
        5, "p"
    )
    assert parse_stream_message(msg(event="stop", sequenceNumber="6", stop={})) == Stop(6)
    assert parse_stream_message(msg(event="future-thing")) == Unknown("future-thing")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", None),
        ("[1, 2]", None),
        (msg(event="media", sequenceNumber="1", media={"payload": "***", "timestamp": "0"}), None),
        (msg(event="media", sequenceNumber="x", media={"payload": "", "timestamp": "0"}), None),
        (msg(event="media", sequenceNumber="1", media={"timestamp": "0"}), None),
        (
            msg(
                event="media", sequenceNumber="1", media={"payload": "A" * 30000, "timestamp": "0"}
            ),
            CLOSE_TOO_BIG,
        ),
        (msg(event="dtmf", sequenceNumber="1", dtmf={"digit": "x"}), None),
        (msg(event="start", start={"callSid": "bad"}), CLOSE_POLICY),
        (
            msg(
                event="start",
                streamSid=STREAM,
                start={"callSid": CALL, "mediaFormat": {"encoding": "audio/l16"}},
            ),
            CLOSE_POLICY,
        ),
        ("x" * 70000, CLOSE_TOO_BIG),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(text, code):
    with pytest.raises(StreamError) as err:
        parse_stream_message(text)
    if code is not None:
        assert err.value.close_code == code
    assert str(err.value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_parser_never_fails_in_an_unexpected_way(data):
    with contextlib.suppress(StreamError):
        parse_stream_message(data)


def test_outgoing_messages_are_json():
    media = json.loads(media_message(STREAM, b"\x00\x01"))
    assert media == {
        "event": "media",
        "streamSid": STREAM,
        "media": {"payload": base64.b64encode(b"\x00\x01").decode()},
    }
    assert json.loads(mark_message(STREAM, "play-1"))["mark"] == {"name": "play-1"}
    assert json.loads(clear_message(STREAM)) == {"event": "clear", "streamSid": STREAM}


def test_a_play_mark_names_its_play_and_nothing_else_does():
    assert played(Mark(3, play_mark(123456789))) == 123456789
    for name in ("play-", "play-\u00b2", "play-1234567890", "play--1", "play-1 ", "stop-1", "1"):
        assert played(Mark(3, name)) is None, name


# -- stream tokens --------------------------------------------------------------------------------
def test_stream_tokens():
    tokens = StreamTokens(b"k" * 32, ttl_seconds=300)
    token = tokens.issue("consent", CALL, now=1000)
    tokens.verify(token, "consent", CALL, now=1200)
    with pytest.raises(TokenError, match="expired"):
        tokens.verify(token, "consent", CALL, now=1301)
    with pytest.raises(TokenError, match="cannot open"):
        tokens.verify(token, "recording", CALL, now=1000)
    with pytest.raises(TokenError, match="does not belong"):
        tokens.verify(token, "consent", "CA" + "f" * 32, now=1000)
    with pytest.raises(TokenError, match="does not belong"):
        StreamTokens(b"j" * 32, 300).verify(token, "consent", CALL, now=1000)
    for bad in (
        None,
        "",
        "v1.consent",
        "v2.consent.1.x",
        token.replace("v1.consent.", "v1.consent.9"),
    ):
        with pytest.raises(TokenError):
            tokens.verify(bad, "consent", CALL, now=1000)


def test_stream_tokens_are_checked_by_any_process_holding_the_master_key(tmp_path):
    # The secret comes from the master key (storage/keys.py, service_key), not from the
    # process: a token one process issued is good in another, as workers and nodes need.
    master = bytes.fromhex("42" * 32)
    with Vault(tmp_path, master_key=master, fsync=False) as one:
        issued = StreamTokens.from_key(one.keyring.service_key, 300).issue("consent", CALL, 1000)
        audit = one.keyring.service_key("another purpose")
    with Vault(tmp_path, master_key=master, fsync=False, recover=False) as other:
        StreamTokens.from_key(other.keyring.service_key, 300).verify(issued, "consent", CALL, 1100)
        assert other.keyring.service_key("another purpose") == audit
        assert other.keyring.service_key(KEY_PURPOSE) != audit
        with pytest.raises(ValueError):
            other.keyring.service_key("")
    stranger = Vault(tmp_path / "elsewhere", master_key=bytes(32), fsync=False)
    with stranger, pytest.raises(TokenError, match="does not belong"):
        StreamTokens.from_key(stranger.keyring.service_key, 300).verify(
            issued, "consent", CALL, 1100
        )
