"""Asterisk ARI wire format: events from the websocket, and the REST calls we make (PROTOCOLS §2).

Pure translation: JSON text in, typed events out; an intention in, (method, path, query) out.
Sockets and HTTP live in ``app.py``, ``call.py`` and ``rest.py`` beside it.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from media.dtmf import DIGITS

# Channels and bridges we create carry this prefix in their ids, so their own StasisStart
# (Asterisk raises one for every channel entering the app) is recognised and skipped.
OWN_PREFIX = "ivr-"
OWN_NAME_PREFIXES = ("UnicastRTP/", "Snoop/", "AudioSocket/")
MAX_EVENT_BYTES = 256 * 1024
# Asterisk's events nest 4 deep (event, channel, caller, name); deeper text is refused before
# json.loads sees it, which would otherwise recurse once per level (5,000 "[" raise
# RecursionError, not ValueError).
MAX_EVENT_NESTING = 32
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")

# Our ids: ivr-<instance>-<call key>-<kind>, every part of fixed length. The instance part
# tells a service which leftovers are its own (after a crash) and never anyone else's; the
# random call key keeps ids unique across restarts and processes; fixed lengths matter because
# Asterisk refuses a new channel id that is a prefix of a live one ("ivr-media-2" beside
# "ivr-media-23"), which fixed-length ids can only be when they are equal.
INSTANCE_HEX, KEY_HEX = 8, 16
BRIDGE, MEDIA, AGENT = "b", "m", "a"
_KINDS = frozenset((BRIDGE, MEDIA, AGENT))


def instance_tag(app: str) -> str:
    """The instance part of our ids, from the Stasis application's name.

    Asterisk lets one websocket own an application name at a time (a second registration
    replaces the first), so the name already identifies one service instance on a PBX."""
    return hashlib.sha256(app.encode()).hexdigest()[:INSTANCE_HEX]


def new_call_key() -> str:
    return secrets.token_hex(KEY_HEX // 2)


def own_id(instance: str, key: str, kind: str) -> str:
    return f"{OWN_PREFIX}{instance}-{key}-{kind}"


@dataclass(frozen=True, slots=True)
class OwnId:
    instance: str
    key: str
    kind: str


def parse_own_id(value: str) -> OwnId | None:
    """The parts of an id this service (any instance) made, or None for anything else."""
    if not value.startswith(OWN_PREFIX):
        return None
    parts = value[len(OWN_PREFIX) :].split("-")
    if len(parts) != 3:
        return None
    instance, key, kind = parts
    hexdigits = "0123456789abcdef"
    if (
        len(instance) != INSTANCE_HEX
        or len(key) != KEY_HEX
        or kind not in _KINDS
        or not all(c in hexdigits for c in instance + key)
    ):
        return None
    return OwnId(instance, key, kind)


# Asterisk's channel ids ("1712345678.42", or the ids we give ours, "ivr-…"): ASCII letters,
# digits and . _ - : @, at most 128.
CHANNEL_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


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
        if not CHANNEL_ID.fullmatch(obj["id"]):
            # The id goes into REST paths (/channels/<id>/answer): nothing that could change them.
            raise AriEventError(f"channel id {obj['id'][:40]!r} is not one Asterisk makes")
        caller = _object(obj.get("caller"))
        dialplan = _object(obj.get("dialplan"))
        variables = _object(obj.get("channelvars"))
        return cls(
            id=obj["id"],
            name=str(obj.get("name", "")),
            state=str(obj.get("state", "")),
            caller_number=str(caller.get("number", "") or ""),
            exten=str(dialplan.get("exten", "") or ""),
            variables={str(k): str(v) for k, v in variables.items() if v is not None},
        )


def _object(value: Any) -> dict[str, Any]:
    """A JSON object, or an empty one for anything else (a missing or malformed part)."""
    return value if isinstance(value, dict) else {}


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
class ApplicationReplaced:
    """Another websocket registered our application name: events now go there, not here."""

    application: str


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    type: str
    channel_id: str | None


AriEvent = (
    StasisStart
    | StasisEnd
    | DtmfReceived
    | HangupRequest
    | ChannelDestroyed
    | ApplicationReplaced
    | UnknownEvent
)


def _cause(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _cause_text(event: AriEvent) -> str:
    """ " (Normal Clearing)" or " (cause 16)" from a hang-up event, for the end reason."""
    if isinstance(event, ChannelDestroyed) and event.cause_txt:
        return f" ({event.cause_txt})"
    if isinstance(event, (ChannelDestroyed, HangupRequest)) and event.cause is not None:
        return f" (cause {event.cause})"
    return ""


def caller_end(event: StasisEnd | HangupRequest | ChannelDestroyed) -> str:
    """Why a call ends when its caller's channel leaves the application or hangs up."""
    if isinstance(event, StasisEnd):
        return "caller left the Stasis application"
    return f"caller hung up{_cause_text(event)}"


def own_channel_end(
    event: StasisEnd | HangupRequest | ChannelDestroyed, *, agent: bool, answered: bool
) -> str:
    """Why a call ends when one of our own channels (its external media, or the agent leg when
    ``agent``) leaves or hangs up."""
    if not agent:
        reason = "media channel ended"  # Asterisk stopping, or someone's DELETE
    elif answered:
        reason = "agent hung up"
    else:
        reason = "agent did not answer"
    return reason + _cause_text(event)


def nesting(data: bytes) -> int:
    """How deep JSON text nests its arrays and objects (brackets inside strings ignored)."""
    if data.count(b"[") + data.count(b"{") <= MAX_EVENT_NESTING:
        return MAX_EVENT_NESTING  # cannot be deeper than that: the usual case, no scan
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub(b"", data)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_event(text: str | bytes) -> AriEvent:
    """One events-websocket message as an event. Anything else raises ``AriEventError`` saying
    why (too large, nested too deep, not JSON, not an event, a malformed field); no other
    exception leaves this function."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if len(data) > MAX_EVENT_BYTES:
        raise AriEventError(f"event too large: {len(data)} bytes, at most {MAX_EVENT_BYTES}")
    depth = nesting(data)
    if depth > MAX_EVENT_NESTING:
        raise AriEventError(f"event nested {depth} deep, at most {MAX_EVENT_NESTING}")
    try:
        event = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:  # UnicodeDecodeError: bytes not UTF-8
        raise AriEventError(f"not JSON: {str(exc)[:100]}") from None
    try:
        return _event(event)
    except AriEventError:
        raise
    except (TypeError, ValueError, RecursionError) as exc:  # a value no field accepts
        raise AriEventError(f"malformed event: {type(exc).__name__}: {str(exc)[:100]}") from None


def _event(event: Any) -> AriEvent:
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
            duration if isinstance(duration, int) and 0 <= duration < 1 << 31 else 0,
        )
    if kind == "ChannelHangupRequest":
        return HangupRequest(Channel.from_json(event.get("channel")), _cause(event.get("cause")))
    if kind == "ChannelDestroyed":
        return ChannelDestroyed(
            Channel.from_json(event.get("channel")),
            _cause(event.get("cause")),
            str(event.get("cause_txt", "")),
        )
    if kind == "ApplicationReplaced":
        return ApplicationReplaced(str(event.get("application", "")))
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


def list_channels() -> Request:
    return Request("GET", "/channels")


def list_bridges() -> Request:
    return Request("GET", "/bridges")


def continue_in_dialplan(channel_id: str) -> Request:
    """Hand the channel back to the dialplan after its ``Stasis()`` line."""
    return Request("POST", f"/channels/{channel_id}/continue")


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


@dataclass(frozen=True, slots=True)
class BridgeInfo:
    id: str
    channels: tuple[str, ...]


def bridges_from_json(value: Any) -> list[BridgeInfo]:
    """``GET /bridges``: each bridge's id and the ids of the channels in it."""
    if not isinstance(value, list):
        raise AriEventError("GET /bridges did not return a list")
    out = []
    for item in value:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            members = item.get("channels")
            ids = [c for c in members if isinstance(c, str)] if isinstance(members, list) else []
            out.append(BridgeInfo(item["id"], tuple(ids)))
    return out


@dataclass(frozen=True, slots=True)
class Leftovers:
    """What a dead process of this instance left in Asterisk, and what to do with it."""

    bridges: tuple[str, ...]  # ours, no live call's: destroy
    channels: tuple[str, ...]  # ours (media, agent), no live call's: hang up
    callers: frozenset[str]  # not ours, found in those bridges: hand back to the dialplan


def find_leftovers(
    instance: str,
    live_keys: Collection[str],
    bridges: Sequence[BridgeInfo],
    channels: Iterable[str],
) -> Leftovers:
    """Ownership is the instance part of an id: another instance's bridges and channels, and
    this instance's live calls, are never in the result."""

    def orphaned(object_id: str) -> bool:
        own = parse_own_id(object_id)
        return own is not None and own.instance == instance and own.key not in live_keys

    dead = [b for b in bridges if orphaned(b.id)]
    return Leftovers(
        bridges=tuple(b.id for b in dead),
        channels=tuple(sorted(c for c in channels if orphaned(c))),
        callers=frozenset(c for b in dead for c in b.channels if parse_own_id(c) is None),
    )


def outcome_variables(
    decision: str, lawful_basis: str, recording_id: str, told: Mapping[str, str]
) -> dict[str, str]:
    """What the PBX is still to be told of a call, as channel variables for the dialplan after
    Stasis() and for CDRs: those it was not ``told`` already with the same value; empty values
    are not set."""
    values = {
        "IVR_CONSENT_DECISION": decision,
        "IVR_LAWFUL_BASIS": lawful_basis,
        "IVR_RECORDING_ID": recording_id,
    }
    return {name: value for name, value in values.items() if value and told.get(name) != value}


_Line = TypeVar("_Line")


def line_for(
    channel: Channel, args: Sequence[str], lookup: Callable[[str], _Line | None]
) -> _Line | None:
    """The line a call is for: the first that ``lookup`` finds where a call's line is named,
    in order: the first Stasis argument, the IVR_LINE channel variable, the dialled extension."""
    named = (args[0] if args else "", channel.variables.get("IVR_LINE", ""), channel.exten)
    for name in named:
        line = lookup(name) if name else None
        if line is not None:
            return line
    return None


def channel_ids_from_json(value: Any) -> list[str]:
    """``GET /channels``: the channel ids."""
    if not isinstance(value, list):
        raise AriEventError("GET /channels did not return a list")
    return [c["id"] for c in value if isinstance(c, dict) and isinstance(c.get("id"), str)]


def response_json(body: bytes) -> Any:
    """A REST response's JSON value; None for an empty body or one that is not JSON."""
    if not body:  # most answers (204): no JSON error raised and caught for them
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def error_message(body: bytes) -> str:
    """What an error response says: its JSON ``message``, else the start of its text."""
    value = response_json(body)
    if isinstance(value, dict) and "message" in value:
        return str(value["message"])
    return body.decode(errors="replace")[:200]


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
    return host, int(str(port))
