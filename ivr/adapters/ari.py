"""Asterisk ARI wire format: events from the websocket, and the REST calls we make (PROTOCOLS §2).

Pure translation: JSON text in, typed events out; an intention in, (method, path, query) out.
Sockets and HTTP live in ``ivr/ari_app.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Channels and bridges we create carry this prefix in their ids, so their own StasisStart
# (Asterisk raises one for every channel entering the app) is recognised and skipped.
OWN_PREFIX = "ivr-"
OWN_NAME_PREFIXES = ("UnicastRTP/", "Snoop/", "AudioSocket/")
MAX_EVENT_BYTES = 256 * 1024


class AriEventError(ValueError):
    """An events-websocket message that is not a well-formed ARI event."""


@dataclass(frozen=True, slots=True)
class Channel:
    id: str
    name: str
    state: str
    caller_number: str
    exten: str
    variables: Mapping[str, str] = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        return self.id.startswith(OWN_PREFIX) or self.name.startswith(OWN_NAME_PREFIXES)

    @classmethod
    def from_json(cls, obj: Any) -> Channel:
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not obj["id"]:
            raise AriEventError("event without a channel id")
        caller = obj.get("caller") if isinstance(obj.get("caller"), dict) else {}
        dialplan = obj.get("dialplan") if isinstance(obj.get("dialplan"), dict) else {}
        variables = obj.get("channelvars") if isinstance(obj.get("channelvars"), dict) else {}
        return cls(
            id=obj["id"],
            name=str(obj.get("name", "")),
            state=str(obj.get("state", "")),
            caller_number=str(caller.get("number", "") or ""),
            exten=str(dialplan.get("exten", "") or ""),
            variables={str(k): str(v) for k, v in variables.items() if v is not None},
        )


@dataclass(frozen=True, slots=True)
class StasisStart:
    channel: Channel
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StasisEnd:
    channel: Channel


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    channel: Channel
    digit: str
    duration_ms: int


@dataclass(frozen=True, slots=True)
class HangupRequest:
    channel: Channel
    cause: int | None


@dataclass(frozen=True, slots=True)
class ChannelDestroyed:
    channel: Channel
    cause: int | None
    cause_txt: str


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    type: str
    channel_id: str | None


AriEvent = StasisStart | StasisEnd | DtmfReceived | HangupRequest | ChannelDestroyed | UnknownEvent
DIGITS = frozenset("0123456789*#ABCD")


def _cause(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_event(text: str | bytes) -> AriEvent:
    if len(text) > MAX_EVENT_BYTES:
        raise AriEventError("event too large")
    try:
        event = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AriEventError(f"not JSON: {exc}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise AriEventError("event without a type")
    kind = event["type"]
    if kind == "StasisStart":
        args = event.get("args") or []
        if not isinstance(args, list):
            raise AriEventError("StasisStart args is not a list")
        return StasisStart(Channel.from_json(event.get("channel")), tuple(str(a) for a in args))
    if kind == "StasisEnd":
        return StasisEnd(Channel.from_json(event.get("channel")))
    if kind == "ChannelDtmfReceived":
        digit = event.get("digit")
        if not isinstance(digit, str) or digit not in DIGITS:
            raise AriEventError(f"ChannelDtmfReceived with digit {digit!r}")
        duration = event.get("duration_ms")
        return DtmfReceived(
            Channel.from_json(event.get("channel")),
            digit,
            duration if isinstance(duration, int) else 0,
        )
    if kind == "ChannelHangupRequest":
        return HangupRequest(Channel.from_json(event.get("channel")), _cause(event.get("cause")))
    if kind == "ChannelDestroyed":
        return ChannelDestroyed(
            Channel.from_json(event.get("channel")),
            _cause(event.get("cause")),
            str(event.get("cause_txt", "")),
        )
    channel = event.get("channel")
    channel_id = channel.get("id") if isinstance(channel, dict) else None
    return UnknownEvent(kind, channel_id if isinstance(channel_id, str) else None)


# -- REST calls -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # below the ARI base URL, starting with '/'
    query: Mapping[str, str] = field(default_factory=dict)


def answer(channel_id: str) -> Request:
    return Request("POST", f"/channels/{channel_id}/answer")


def hang_up(channel_id: str, reason: str = "normal") -> Request:
    return Request("DELETE", f"/channels/{channel_id}", {"reason": reason})


def set_variable(channel_id: str, name: str, value: str) -> Request:
    return Request("POST", f"/channels/{channel_id}/variable", {"variable": name, "value": value})


def get_channel(channel_id: str) -> Request:
    return Request("GET", f"/channels/{channel_id}")


def create_bridge(bridge_id: str) -> Request:
    return Request("POST", "/bridges", {"type": "mixing", "bridgeId": bridge_id, "name": bridge_id})


def add_to_bridge(bridge_id: str, channel_ids: Sequence[str]) -> Request:
    return Request("POST", f"/bridges/{bridge_id}/addChannel", {"channel": ",".join(channel_ids)})


def destroy_bridge(bridge_id: str) -> Request:
    return Request("DELETE", f"/bridges/{bridge_id}")


def external_media(app: str, channel_id: str, host: str, port: int) -> Request:
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Request(
        "POST",
        "/channels/externalMedia",
        {
            "app": app,
            "channelId": channel_id,
            "external_host": target,
            "format": "ulaw",
            "encapsulation": "rtp",
            "transport": "udp",
            "direction": "both",
        },
    )


def originate(app: str, channel_id: str, endpoint: str, caller_id: str, timeout: int) -> Request:
    return Request(
        "POST",
        "/channels",
        {
            "endpoint": endpoint,
            "app": app,
            "appArgs": "agent",
            "channelId": channel_id,
            "callerId": caller_id,
            "timeout": str(timeout),
        },
    )


def rtp_peer(channel: Mapping[str, Any]) -> tuple[str, int]:
    """Where to send a call's RTP: the address Asterisk announced for its external-media
    channel (``UNICASTRTP_LOCAL_ADDRESS``/``_PORT``)."""
    variables = channel.get("channelvars") if isinstance(channel, Mapping) else None
    if not isinstance(variables, Mapping):
        raise AriEventError("externalMedia channel without channelvars")
    host = variables.get("UNICASTRTP_LOCAL_ADDRESS")
    port = variables.get("UNICASTRTP_LOCAL_PORT")
    if not isinstance(host, str) or not host or not str(port).isdigit():
        raise AriEventError("externalMedia channel without UNICASTRTP_LOCAL_ADDRESS/PORT")
    return host, int(port)
