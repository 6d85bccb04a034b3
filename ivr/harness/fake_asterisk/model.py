"""The fake Asterisk's state: channels, bridges, and how they change.

Every change that Asterisk would report goes out through ``Pbx.emit`` (the events socket), in
the order Asterisk 22 reports it. Lookups that fail raise ``AriError``
with Asterisk's own status and message, for the REST layer to answer with.

The ARI models carry only what the service reads (``ivr/platforms/asterisk/ari.py``: a
channel's id, name, state, caller, dialled extension and variables; a bridge's id and members)
and what tells a test or a reader which object it is (a bridge's type and name).
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from ivr.harness.fake_asterisk.rtp import RtpPeer, mix_frames

CALLER = "caller"
EXTERNAL_MEDIA = "external_media"
AGENT = "agent"
#: What a caller's hang-up looks like by default (typical on Asterisk 22, not guaranteed).
DEFAULT_HANGUP_ORDER: tuple[str, ...] = ("ChannelHangupRequest", "StasisEnd", "ChannelDestroyed")
HANGUP_EVENTS = frozenset(
    {"ChannelHangupRequest", "ChannelLeftBridge", "StasisEnd", "ChannelDestroyed"}
)
# Q.850 cause texts as Asterisk's ast_cause2str gives them, for the causes the fake produces.
CAUSE_TEXT: dict[int, str] = {
    1: "Unallocated (unassigned) number",
    16: "Normal Clearing",
    17: "User busy",
    19: "User alerting, no answer",
    21: "Call Rejected",
    34: "Circuit/channel congestion",
}


class FrameSource(Protocol):
    """160-byte μ-law frames by index, e.g. ``ivr.harness.audio.tone()``."""

    def frame(self, index: int) -> bytes: ...


class AriError(Exception):
    """A request Asterisk would refuse: its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ChannelState:
    """One channel as the fake sees it; ``to_json()`` is the part of the ARI Channel model the
    service reads (``channelvars`` only when the channel has variables)."""

    id: str
    name: str
    kind: str  # CALLER, EXTERNAL_MEDIA or AGENT
    app: str
    state: str
    caller_number: str = ""
    exten: str = "s"
    vars: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    in_stasis: bool = False
    subscribed: bool = True  # the app gets this channel's events
    answered: bool = False
    destroyed: bool = False
    cause: int | None = None  # the hang-up cause, once destroyed
    bridge_id: str | None = None
    met: list[str] = field(default_factory=list)  # channels it has shared a bridge with
    rtp: RtpPeer | None = None  # external-media channels
    audio: FrameSource | None = None  # callers and agents: what they say
    audio_index: int = 0  # next frame of ``audio`` to mix

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "caller": {"number": self.caller_number},
            "dialplan": {"exten": self.exten},
        }
        if self.vars:
            data["channelvars"] = dict(self.vars)
        return data


@dataclass
class BridgeState:
    """One bridge; ``to_json()`` is the part of the ARI Bridge model the service reads."""

    id: str
    types: list[str]
    name: str
    channels: list[str] = field(default_factory=list)
    destroyed: bool = False

    @property
    def mixing(self) -> bool:
        return "mixing" in self.types

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "bridge_type": "mixing" if self.mixing else "holding",
            "name": self.name,
            "channels": list(self.channels),
        }


class Pbx:
    """Channels and bridges, and every transition between their states."""

    def __init__(
        self,
        *,
        app: str,
        seed: int,
        emit: Callable[[str, str, Mapping[str, Any]], None],
    ) -> None:
        self.app = app
        self.rng = random.Random(seed)
        self.emit = emit  # (app, event type, fields)
        self.channels: dict[str, ChannelState] = {}
        self.bridges: dict[str, BridgeState] = {}
        self._epoch = int(datetime.now(UTC).timestamp())
        self._seq = itertools.count(1)

    # -- ids and lookups ---------------------------------------------------------------------
    def new_channel_id(self) -> str:
        return f"{self._epoch}.{next(self._seq)}"

    def new_name_seq(self) -> str:
        return f"{next(self._seq):08x}"

    def new_uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def id_taken(self, channel_id: str) -> bool:
        """Asterisk refuses a new channel id that is a prefix (case-insensitive) of any live
        channel's id, not only an equal one (channelstorage's uniqueid lookup compares the new
        id's length only)."""
        new = channel_id.lower()
        return any(
            cid.lower().startswith(new) for cid, ch in self.channels.items() if not ch.destroyed
        )

    def live(self, channel_id: str) -> ChannelState | None:
        ch = self.channels.get(channel_id)
        return ch if ch is not None and not ch.destroyed else None

    def channel(self, channel_id: str) -> ChannelState:
        ch = self.live(channel_id)
        if ch is None:
            raise AriError(404, "Channel not found")
        return ch

    def control(self, channel_id: str) -> ChannelState:
        """The channel if it is in Stasis; else 404 / 409 as Asterisk's find_control()."""
        ch = self.channel(channel_id)
        if not ch.in_stasis:
            raise AriError(409, "Channel not in Stasis application")
        return ch

    def bridge(self, bridge_id: str) -> BridgeState:
        bridge = self.bridges.get(bridge_id)
        if bridge is None or bridge.destroyed:
            raise AriError(404, "Bridge not found")
        return bridge

    # -- channel transitions -----------------------------------------------------------------
    def add(self, ch: ChannelState) -> ChannelState:
        self.channels[ch.id] = ch
        return ch

    def emit_channel(self, ch: ChannelState, type_: str, fields: Mapping[str, Any] = {}) -> None:
        if ch.subscribed:
            self.emit(ch.app, type_, {**fields, "channel": ch.to_json()})

    def answer(self, ch: ChannelState) -> None:
        if ch.state != "Up":
            ch.state = "Up"
            ch.answered = True
            self.emit_channel(ch, "ChannelStateChange")

    def enter_stasis(self, ch: ChannelState) -> None:
        """A channel the app created enters ``Stasis(app[,args])``."""
        ch.in_stasis = True
        self.emit_channel(ch, "StasisStart", {"args": list(ch.args)})

    def agent_answers(self, ch: ChannelState) -> None:
        self.answer(ch)
        self.enter_stasis(ch)  # originated into the app: it runs Stasis(app[,appArgs])

    def back_to_dialplan(self, ch: ChannelState) -> None:
        """``continue``: the channel leaves Stasis."""
        self.leave_bridge(ch)
        ch.in_stasis = False
        self.emit_channel(ch, "StasisEnd")
        if ch.kind == CALLER:
            ch.subscribed = False  # back in the dialplan; the app hears no more of it
        else:  # channels the app created have no dialplan to return to: they hang up
            self.terminate(ch, 16, order=("ChannelDestroyed",))

    def terminate(
        self,
        ch: ChannelState,
        cause: int,
        *,
        order: Sequence[str],
        duplicate: bool | Collection[str] = False,
        soft: bool = False,
        faithful: bool = True,
    ) -> None:
        """Hang ``ch`` up, emitting the hang-up events in ``order`` (see
        ``FakeCall.hangup``); ``faithful``: as Asterisk would, so nothing after a
        caller's StasisEnd."""
        names = list(order)
        unknown = [n for n in names if n not in HANGUP_EVENTS]
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"order must name distinct events of {sorted(HANGUP_EVENTS)}")
        twice = set(names) if duplicate is True else set(duplicate or ())
        if "ChannelLeftBridge" not in names and ch.bridge_id is not None:
            at = names.index("StasisEnd") if "StasisEnd" in names else len(names)
            names.insert(at, "ChannelLeftBridge")
        was_in_stasis = ch.in_stasis
        bridge_json = self.leave_bridge(ch, emit=False)
        ch.in_stasis = False
        ch.destroyed, ch.cause = True, cause
        snapshot = ch.to_json()
        fields: dict[str, dict[str, Any]] = {
            "ChannelHangupRequest": {"soft": True, "cause": cause} if soft else {"cause": cause},
            "ChannelLeftBridge": {"bridge": bridge_json},
            "StasisEnd": {},
            "ChannelDestroyed": {"cause": cause, "cause_txt": CAUSE_TEXT.get(cause, "Unknown")},
        }
        if ch.subscribed:
            for name in names:
                if (name == "ChannelLeftBridge" and bridge_json is None) or (
                    name == "StasisEnd" and not was_in_stasis
                ):
                    continue
                for _ in range(2 if name in twice else 1):
                    self.emit(ch.app, name, {**fields[name], "channel": snapshot})
                if name == "StasisEnd" and ch.kind == CALLER and faithful:
                    # A channel that came in by Stasis() in the dialplan is the app's only
                    # until StasisEnd: Asterisk 22 sends it nothing after (no
                    # ChannelDestroyed). Channels the app created stay subscribed.
                    break
        ch.subscribed = False
        if ch.rtp is not None:
            ch.rtp.close()

    # -- bridges -------------------------------------------------------------------------------
    def add_to_bridge(self, bridge: BridgeState, members: Sequence[ChannelState]) -> None:
        for ch in members:
            if ch.bridge_id == bridge.id:
                continue
            self.leave_bridge(ch)  # a channel is moved from its old bridge
            for other in bridge.channels:
                for a, b in ((ch, self.channels[other]), (self.channels[other], ch)):
                    if b.id not in a.met:
                        a.met.append(b.id)
            bridge.channels.append(ch.id)
            ch.bridge_id = bridge.id
            self.emit_channel(ch, "ChannelEnteredBridge", {"bridge": bridge.to_json()})

    def leave_bridge(self, ch: ChannelState, *, emit: bool = True) -> dict[str, Any] | None:
        """Take ``ch`` out of its bridge; returns the bridge JSON afterwards (None if unbridged)."""
        if ch.bridge_id is None:
            return None
        bridge = self.bridges[ch.bridge_id]  # live: a destroyed bridge has no members
        ch.bridge_id = None
        bridge.channels.remove(ch.id)
        snapshot = bridge.to_json()
        if emit:
            self.emit_channel(ch, "ChannelLeftBridge", {"bridge": snapshot})
        return snapshot

    def destroy_bridge(self, bridge: BridgeState) -> None:
        members = [self.channels[cid] for cid in bridge.channels]
        for ch in members:
            self.leave_bridge(ch)
        bridge.destroyed = True
        for app in dict.fromkeys([self.app, *(ch.app for ch in members)]):
            self.emit(app, "BridgeDestroyed", {"bridge": bridge.to_json()})

    # -- who hears whom ------------------------------------------------------------------------
    def _mixing_members(self, ch: ChannelState) -> list[ChannelState]:
        """The members of ``ch``'s bridge if it is a mixing one (media flows), else none."""
        bridge = self.bridges[ch.bridge_id] if ch.bridge_id else None
        return [self.channels[c] for c in bridge.channels] if bridge and bridge.mixing else []

    def bridge_peer(self, ch: ChannelState) -> RtpPeer | None:
        """The open RTP peer of an external-media channel sharing a mixing bridge with ``ch``."""
        peers = [m.rtp for m in self._mixing_members(ch) if m.rtp and not m.rtp.closed]
        return peers[-1] if peers else None

    def voices(self, peer: RtpPeer) -> list[ChannelState]:
        """The members of ``peer``'s bridge whose audio it hears (everyone with a voice)."""
        members = self._mixing_members(self.channels[peer.channel_id])
        return [m for m in members if m.audio is not None and m.answered and not m.destroyed]

    def next_mixed_packet(self, peer: RtpPeer) -> bytes:
        """The bridge's next 20 ms for ``peer``. Each voice has a frame counter that advances
        only while it is mixed in, so an agent who joins after ``k`` caller frames is heard
        from its own frame 0 alongside the caller's frame ``k``."""
        frames = []
        for voice in self.voices(peer):
            assert voice.audio is not None
            frames.append(voice.audio.frame(voice.audio_index))
            voice.audio_index += 1
        return peer.next_audio_packet(mix_frames(frames))
