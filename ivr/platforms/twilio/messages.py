"""Twilio wire format: webhook forms, TwiML, and Media Streams messages (PROTOCOLS.md §1).

Pure translation, no I/O: text in, typed values out, and back. Everything Twilio sends is
checked here; what cannot be trusted raises ``StreamError`` carrying the websocket close code
the service should answer with, or comes back as ``Unknown`` so that it is counted, not lost.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl
from xml.etree import ElementTree as ET

import orjson

from media.dtmf import DIGITS

CALL_SID = re.compile(r"^CA[0-9a-fA-F]{32}$")
ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
STREAM_SID = re.compile(r"^MZ[0-9a-fA-F]{32}$")

# RFC 6455 close codes used by the service.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011

MAX_MESSAGE_BYTES = 64 * 1024  # a media message carries 20 ms: a few hundred bytes
MAX_MEDIA_PAYLOAD = 16 * 1024  # decoded bytes of one inbound media message (2 s of μ-law)
# Twilio's messages nest three deep and open a handful of objects and arrays; counting the
# brackets (a bound on the nesting, strings included) before json.loads keeps a text of 5,000
# "[" from reaching the parser's recursion limit.
MAX_BRACKETS = 64
MAX_NUMBER_DIGITS = 12  # sequenceNumber, timestamp: ms in 31 years; more is not Twilio
MAX_WEBHOOK_FIELDS = 100  # a voice or status webhook has about 30


class WebhookError(ValueError):
    """A webhook form that cannot be a Twilio call (answered with HTTP 400)."""


class StreamError(ValueError):
    """A Media Streams message the service cannot accept; ``close_code`` says how to answer."""

    def __init__(self, reason: str, close_code: int = CLOSE_INVALID_DATA) -> None:
        super().__init__(reason)
        self.close_code = close_code


# -- webhooks -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CallWebhook:
    call_sid: str
    account_sid: str
    from_: str
    to: str
    call_status: str
    direction: str
    call_duration: int | None

    @classmethod
    def from_form(cls, form: Mapping[str, str]) -> CallWebhook:
        def need(name: str) -> str:
            value = form.get(name)
            if not value:
                raise WebhookError(f"missing form field {name}")
            return value

        call_sid = need("CallSid")
        if not CALL_SID.match(call_sid):
            raise WebhookError("CallSid is not CA followed by 32 hex digits")
        account_sid = need("AccountSid")
        if not ACCOUNT_SID.match(account_sid):
            raise WebhookError("AccountSid is not AC followed by 32 hex digits")
        duration = form.get("CallDuration")
        if duration is not None and not _is_digits(duration, 9):
            raise WebhookError("CallDuration is not a whole number of seconds (ASCII digits)")
        return cls(
            call_sid=call_sid,
            account_sid=account_sid,
            from_=form.get("From", ""),
            to=need("To"),
            call_status=form.get("CallStatus", ""),
            direction=form.get("Direction", ""),
            call_duration=int(duration) if duration is not None else None,
        )


def _is_digits(text: str, most: int) -> bool:
    """``text`` is 1 to ``most`` ASCII digits (``str.isdigit`` also takes "²" and "١")."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """A webhook body (``application/x-www-form-urlencoded``, UTF-8) as its fields, in order.
    Raises WebhookError for anything else: invalid UTF-8, a field without ``=``, too many."""
    try:
        return parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_WEBHOOK_FIELDS,
        )
    except UnicodeDecodeError:
        raise WebhookError("the body is not URL-encoded UTF-8") from None
    except ValueError as exc:  # a malformed field, or more than MAX_WEBHOOK_FIELDS
        raise WebhookError(f"the body is not a URL-encoded form: {str(exc)[:80]}") from None


# The <Stream statusCallback> events (Twilio's docs: "stream-started", "stream-stopped",
# "stream-error" with the reason in StreamError).
STREAM_EVENTS = frozenset({"stream-started", "stream-stopped", "stream-error"})
RECORDING_STREAM_NAME = "recording"
MAX_STREAM_ERROR = 300


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """A ``<Stream statusCallback>`` request: what became of one of the call's streams."""

    call_sid: str
    stream_sid: str
    stream_name: str
    event: str
    error: str

    @classmethod
    def from_form(cls, form: Mapping[str, str]) -> StreamStatus:
        call_sid = form.get("CallSid", "")
        if not CALL_SID.match(call_sid):
            raise WebhookError("CallSid is not CA followed by 32 hex digits")
        event = form.get("StreamEvent", "")
        if event not in STREAM_EVENTS:
            raise WebhookError(f"StreamEvent {event[:40]!r} is not one of {sorted(STREAM_EVENTS)}")
        return cls(
            call_sid=call_sid,
            stream_sid=form.get("StreamSid", "")[:64],
            stream_name=form.get("StreamName", "")[:64],
            event=event,
            error=" ".join(form.get("StreamError", "").split())[:MAX_STREAM_ERROR],
        )


# -- TwiML ----------------------------------------------------------------------------------------
def _document(root: ET.Element) -> str:
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="unicode")


def _stream(parent: ET.Element, url: str, parameters: Mapping[str, str], **attrs: str) -> None:
    stream = ET.SubElement(parent, "Stream", {"url": url, **attrs})
    for name, value in parameters.items():
        ET.SubElement(stream, "Parameter", {"name": name, "value": value})


def twiml_consent_stream(stream_url: str, parameters: Mapping[str, str], continue_url: str) -> str:
    """Talk to the caller over a bidirectional stream; once we close it, Twilio continues."""
    root = ET.Element("Response")
    _stream(ET.SubElement(root, "Connect"), stream_url, parameters)
    ET.SubElement(root, "Redirect", {"method": "POST"}).text = continue_url
    return _document(root)


def twiml_record_and_dial(
    stream_url: str, parameters: Mapping[str, str], dial: str, status_url: str
) -> str:
    """Fork both directions of the call to the recording stream, then connect the agent.
    Twilio reports the stream's fate to ``status_url`` (``StreamStatus``): a stream that cannot
    connect must not leave a recording that looks complete."""
    root = ET.Element("Response")
    _stream(
        ET.SubElement(root, "Start"),
        stream_url,
        parameters,
        track="both_tracks",
        name=RECORDING_STREAM_NAME,
        statusCallback=status_url,
        statusCallbackMethod="POST",
    )
    _dial(root, dial)
    return _document(root)


def twiml_dial(dial: str) -> str:
    root = ET.Element("Response")
    _dial(root, dial)
    return _document(root)


def _dial(root: ET.Element, target: str) -> None:
    dial = ET.SubElement(root, "Dial")
    if target.startswith(("sip:", "sips:")):
        ET.SubElement(dial, "Sip").text = target
    else:
        dial.text = target


def twiml_say_hangup(text: str, language: str = "en-US") -> str:
    root = ET.Element("Response")
    ET.SubElement(root, "Say", {"language": language}).text = text
    ET.SubElement(root, "Hangup")
    return _document(root)


def twiml_hangup() -> str:
    root = ET.Element("Response")
    ET.SubElement(root, "Hangup")
    return _document(root)


def twiml_reject(reason: str) -> str:
    """Refuse the call unanswered; ``reason`` ``busy`` plays a busy tone (Twilio's <Reject>)."""
    root = ET.Element("Response")
    ET.SubElement(root, "Reject", {"reason": reason})
    return _document(root)


# -- Media Streams: what Twilio sends -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    sequence: int
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 4x, 100 times a second
class Media:
    sequence: int
    track: str  # "inbound" (the caller) or "outbound"
    timestamp_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Dtmf:
    sequence: int
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    sequence: int
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    sequence: int


@dataclass(frozen=True, slots=True)
class Unknown:
    event: str


StreamMessage = Connected | Start | Media | Dtmf | Mark | Stop | Unknown
_TRACKS = frozenset(("inbound", "outbound"))
_a2b = binascii.a2b_base64
_MAX_NUMBER = 10**MAX_NUMBER_DIGITS - 1


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


# NaN, Infinity and -Infinity are Python's extension to JSON: refused, not turned into floats.
_loads = json.JSONDecoder(parse_constant=_no_constant).decode
# Strict RFC 8259 (no NaN, no lone surrogates, valid UTF-8), integers beyond 64 bits as floats
# (which _number refuses), nesting bounded at 1,024 in C: about four times json's speed.
_fast_loads = orjson.loads


def _number(value: object) -> int:
    """A count or a time in ms as Twilio sends it: a string of ASCII digits (or, rather than
    guess wrong, a JSON integer), within range; -1 for anything else (floats, "²", "1e3")."""
    if type(value) is str:
        if 0 < len(value) <= MAX_NUMBER_DIGITS and value.isascii() and value.isdigit():
            return int(value)
        return -1
    if type(value) is int and 0 <= value <= _MAX_NUMBER:  # not bool: type() is exact
        return value
    return -1


def _int(value: object, what: str) -> int:
    number = _number(value)
    if number < 0:
        raise StreamError(f"{what} {str(value)[:20]!r} is not a number of ASCII digits")
    return number


def _obj(message: dict[str, object], key: str) -> dict[str, object]:
    value = message.get(key)
    if not isinstance(value, dict):
        raise StreamError(f"{str(message.get('event'))[:40]} message without a {key} object")
    return value


def parse_stream_message(text: str | bytes) -> StreamMessage:
    """One websocket text frame from Twilio as a typed message.

    A well-formed media message is parsed by orjson (strict JSON, UTF-8 checked, nesting
    bounded) and taken in one go (``media_values``). Anything else, or anything that trips it,
    goes through ``parse_slowly``, the reference, which says precisely what is wrong. The two
    agree on every message (tests/test_stream_parse.py), but for a media message whose extra
    fields hold more than MAX_BRACKETS brackets: taken here, as orjson's cost does not grow
    with nesting. A message over MAX_MESSAGE_BYTES is refused by ``parse_slowly`` before it is
    parsed at all."""
    values = media_values(text)
    return Media(*values) if values is not None else parse_slowly(text)


# A media message's sequence number, track, timestamp (ms) and payload.
MediaValues = tuple[int, str, int, bytes]


def media_values(text: str | bytes) -> MediaValues | None:
    """A well-formed media message as plain values, what ``parse_stream_message`` would put in
    its ``Media``; None for anything else (``parse_stream_message`` then says what it is).

    The hot path, 50 times a second per track: the stream takes the values without building a
    ``Media`` for each, whose ``__init__``, a frozen dataclass's, sets every field through
    ``object.__setattr__``."""
    if len(text) > MAX_MESSAGE_BYTES:
        return None
    try:
        return _media_values(_fast_loads(text))
    except ValueError:  # orjson.JSONDecodeError
        return None


def parse_slowly(text: str | bytes) -> StreamMessage:
    """``parse_stream_message`` with the standard library's parser and every check in order:
    the reference the fast path must agree with, and what explains a message refused."""
    if len(text) > MAX_MESSAGE_BYTES:
        raise StreamError("message too large", CLOSE_TOO_BIG)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise StreamError("not JSON: the message is not UTF-8") from None
    if text.count("[") + text.count("{") > MAX_BRACKETS:
        raise StreamError(f"not JSON from Twilio: more than {MAX_BRACKETS} brackets")
    try:
        message = _loads(text)
    except ValueError as exc:  # JSONDecodeError, a NaN or Infinity, an integer of 4,300 digits
        raise StreamError(f"not JSON: {str(exc)[:80]}") from None
    values = _media_values(message)
    return Media(*values) if values is not None else _parse_carefully(message)


def _media_values(message: Any) -> MediaValues | None:
    """A well-formed media message taken in one go; None for anything that trips it, which is
    then parsed again, slowly, to say precisely what is wrong."""
    try:
        if message["event"] == "media":
            media = message["media"]
            audio = _a2b(media["payload"], strict_mode=True)  # ValueError if not ASCII
            track = media.get("track", "inbound")
            sequence = _number(message["sequenceNumber"])
            timestamp = _number(media["timestamp"])
            if (
                track in _TRACKS
                and sequence >= 0
                and timestamp >= 0
                and len(audio) <= MAX_MEDIA_PAYLOAD
            ):
                return sequence, track, timestamp, audio
    except (KeyError, TypeError, ValueError, AttributeError):  # binascii.Error is a ValueError
        pass
    return None


def _parse_carefully(message: object) -> StreamMessage:
    if not isinstance(message, dict):
        raise StreamError("message is not a JSON object")
    event = message.get("event")
    if event == "media":
        media = _obj(message, "media")
        payload = media.get("payload")
        if not isinstance(payload, str):
            raise StreamError("media message without a payload string")
        if len(payload) > MAX_MEDIA_PAYLOAD * 4 // 3 + 4:
            raise StreamError("media payload too large", CLOSE_TOO_BIG)
        try:
            binascii.a2b_base64(payload, strict_mode=True)
        except ValueError:  # binascii.Error, or a payload that is not ASCII
            raise StreamError("media payload is not valid base64") from None
        track = media.get("track", "inbound")
        if not isinstance(track, str) or track not in _TRACKS:
            raise StreamError(f"unknown media track {str(track)[:20]!r}")
        _int(message.get("sequenceNumber"), "sequenceNumber")
        _int(media.get("timestamp"), "media.timestamp")
        raise StreamError("media message that cannot be read")  # not reached
    if event == "connected":
        return Connected(str(message.get("protocol", "")), str(message.get("version", "")))
    if event == "start":
        start = _obj(message, "start")
        call_sid = start.get("callSid")
        if not isinstance(call_sid, str) or not CALL_SID.match(call_sid):
            raise StreamError("start.callSid is missing or malformed", CLOSE_POLICY)
        stream_sid = message.get("streamSid") or start.get("streamSid")
        if not isinstance(stream_sid, str) or not STREAM_SID.match(stream_sid):
            raise StreamError("streamSid is missing or malformed", CLOSE_POLICY)
        fmt = start.get("mediaFormat") or {}
        if not isinstance(fmt, dict) or fmt.get("encoding", "audio/x-mulaw") != "audio/x-mulaw":
            raise StreamError(f"unsupported media format {fmt!r}", CLOSE_POLICY)
        if fmt.get("sampleRate", 8000) != 8000 or fmt.get("channels", 1) != 1:
            raise StreamError(f"unsupported media format {fmt!r}", CLOSE_POLICY)
        params = start.get("customParameters") or {}
        if not isinstance(params, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in params.items()
        ):
            raise StreamError("start.customParameters is not an object of strings", CLOSE_POLICY)
        tracks = start.get("tracks") or ["inbound"]
        if not isinstance(tracks, list) or not all(t in ("inbound", "outbound") for t in tracks):
            raise StreamError(f"unknown tracks {tracks!r}", CLOSE_POLICY)
        return Start(
            _int(message.get("sequenceNumber", "1"), "sequenceNumber"),
            stream_sid,
            call_sid,
            str(start.get("accountSid", "")),
            tuple(tracks),
            params,
        )
    if event == "dtmf":
        digit = _obj(message, "dtmf").get("digit")
        if not isinstance(digit, str) or digit not in DIGITS:
            raise StreamError(f"dtmf digit {digit!r} is not a DTMF digit")
        return Dtmf(_int(message.get("sequenceNumber"), "sequenceNumber"), digit)
    if event == "mark":
        name = _obj(message, "mark").get("name")
        if not isinstance(name, str):
            raise StreamError("mark without a name")
        return Mark(_int(message.get("sequenceNumber"), "sequenceNumber"), name)
    if event == "stop":
        return Stop(_int(message.get("sequenceNumber", "0"), "sequenceNumber"))
    return Unknown(str(event)[:40])


# -- Media Streams: what we send ------------------------------------------------------------------
def media_message(stream_sid: str, audio: bytes) -> str:
    """Audio for Twilio to play, of any length (the prompt goes out a batch of frames a message)."""
    payload = base64.b64encode(audio).decode("ascii")
    return f'{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"{payload}"}}}}'


def mark_message(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def play_mark(play_id: int) -> str:
    """The name of the mark sent after a prompt's last frame; Twilio echoes it once played."""
    return f"play-{play_id}"


def played(mark: Mark) -> int | None:
    """The play id a mark echoes (``play_mark``); None for any other name, or one that is
    not 1 to 9 ASCII digits after ``play-`` (a mark is anyone's input)."""
    play = mark.name.removeprefix("play-")
    if play == mark.name or not (0 < len(play) <= 9 and play.isascii() and play.isdigit()):
        return None
    return int(play)


def clear_message(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": stream_sid})


def websocket_base(http_base: str) -> str:
    """The websocket URL base for the service's public HTTP base (https -> wss)."""
    if http_base.startswith("https://"):
        return "wss://" + http_base[len("https://") :]
    return "ws://" + http_base[len("http://") :]
