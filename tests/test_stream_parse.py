"""The fast media path (orjson) agrees with the reference parser on every message.

``parse_stream_message`` takes a well-formed media message through orjson and hands anything
else to ``parse_slowly`` (the standard library's parser, every check in order). Whatever the
text, both give the same message or refuse it with the same reason and close code; the one
documented difference (a media message whose extra fields hold more than MAX_BRACKETS
brackets) is checked on its own.
"""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.harness import twilio_wire as wire
from ivr.platforms.twilio.messages import (
    MAX_BRACKETS,
    Media,
    StreamError,
    media_values,
    parse_slowly,
    parse_stream_message,
)

SID = "MZ" + "0123456789abcdef" * 2
TEMPLATE = wire.media_template(SID, "inbound")


def outcome(parse: Any, text: str | bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(text)
    except StreamError as exc:
        return "refused", (str(exc), exc.close_code)


def media(seq: int = 3, ts: int = 40, payload: bytes = b"\xff" * 160) -> bytes:
    return TEMPLATE % (seq, seq - 1, ts, base64.b64encode(payload))


def check_values(text: str | bytes, fast: tuple[str, Any]) -> None:
    """``media_values`` (the stream's hot path) gives what ``parse_stream_message`` gave, or
    None where that gave no ``Media`` by the fast path: the stream then parses it again."""
    values = media_values(text)
    if values is None:
        return  # anything the fast path did not take goes through parse_stream_message
    assert fast == ("ok", Media(*values))


def test_a_media_message_is_taken_by_the_fast_path_and_equals_the_reference() -> None:
    text = media(7, 120, bytes(range(160)))
    assert (
        parse_stream_message(text)
        == parse_slowly(text)
        == Media(7, "inbound", 120, bytes(range(160)))
    )
    assert parse_stream_message(text.decode()) == parse_slowly(text)
    assert (
        media_values(text) == media_values(text.decode()) == (7, "inbound", 120, bytes(range(160)))
    )


# Changes to a real media message, each a way Twilio's text could differ or be forged.
EDITS = [
    (b'"sequenceNumber":"', b'"sequenceNumber":'),  # unquoted (and then broken) number
    (b'"inbound"', b'"sideways"'),
    (b'"inbound"', b"null"),
    (b'"timestamp":"', b'"timestamp":"-'),
    (b'"timestamp":"', b'"timestamp":"\xd9\xa1'),  # an Arabic-Indic digit in UTF-8
    (b'"payload":"', b'"payload":"@'),
    (b'"payload":"', b'"payload":"\\u0041'),  # an escape in base64
    (b'"media":{', b'"media":[{'),
    (b'"event":"media"', b'"event":"Media"'),
    (b'"event":"media"', b'"event":"media","event":"mark"'),  # duplicate key: the last wins
    (b'{"event"', b'{"sequenceNumber":1e400,"event"'),
    (b'{"event"', b'{"x":NaN,"event"'),
    (b'{"event"', b'{"x":"\\ud800","event"'),  # a lone surrogate
    (b'"payload"', b'"payload":"","payload"'),
    (b"}}", b"}},"),
    (b"}}", b"}} "),
    (b"}}", b"}"),
    (b'"chunk"', b'"x":' + b"[" * 70 + b"]" * 70 + b',"chunk"'),
]


@settings(max_examples=400, deadline=None)
@given(
    seq=st.integers(min_value=0, max_value=10**13),
    ts=st.integers(min_value=0, max_value=10**13),
    payload=st.binary(max_size=400),
    edits=st.lists(st.sampled_from(range(len(EDITS))), max_size=3),
    cut=st.none() | st.integers(min_value=0, max_value=600),
    as_text=st.booleans(),
)
def test_fast_and_slow_agree_on_mutated_media_messages(
    seq: int, ts: int, payload: bytes, edits: list[int], cut: int | None, as_text: bool
) -> None:
    text = media(seq, ts, payload)
    for i in edits:
        old, new = EDITS[i]
        text = text.replace(old, new, 1)
    if cut is not None:
        text = text[:cut]
    message: str | bytes = text
    if as_text:
        with contextlib.suppress(UnicodeDecodeError):
            message = text.decode()
    fast, slow = outcome(parse_stream_message, message), outcome(parse_slowly, message)
    check_values(message, fast)
    nested = text.count(b"[") + text.count(b"{") > MAX_BRACKETS
    if nested and fast[0] == "ok":  # the documented difference: see below
        assert slow == (
            "refused",
            (f"not JSON from Twilio: more than {MAX_BRACKETS} brackets", 1007),
        )
    else:
        assert fast == slow


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_fast_and_slow_agree_on_anything(data: str | bytes) -> None:
    fast = outcome(parse_stream_message, data)
    assert fast == outcome(parse_slowly, data)
    check_values(data, fast)


def test_other_events_go_to_the_reference_parser() -> None:
    for doc in (
        {"event": "mark", "sequenceNumber": "4", "mark": {"name": "play-1"}},
        {"event": "stop", "sequenceNumber": "9"},
        {"event": "dtmf", "sequenceNumber": "5", "dtmf": {"digit": "1"}},
        {"event": "media", "sequenceNumber": "²", "media": {"timestamp": "0", "payload": ""}},
    ):
        text = json.dumps(doc)
        assert outcome(parse_stream_message, text) == outcome(parse_slowly, text)
        assert media_values(text) is None


def test_a_media_message_with_deep_extra_fields_is_taken_only_by_the_fast_path() -> None:
    """More than MAX_BRACKETS brackets in a well-formed media message: the reference refuses it
    before parsing (its parser's cost grows with nesting), orjson parses it at no risk."""
    text = media().replace(
        b'"chunk"', b'"x":' + b"[" * MAX_BRACKETS + b"]" * MAX_BRACKETS + b',"chunk"', 1
    )
    assert isinstance(parse_stream_message(text), Media)
    refused = outcome(parse_slowly, text)
    assert refused[0] == "refused" and "brackets" in refused[1][0]
