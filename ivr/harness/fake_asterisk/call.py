"""The driver's handle on one call placed with ``FakeAsterisk.place_call``: the caller's side."""

from __future__ import annotations

import socket
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING

from ivr.harness.fake_asterisk.model import (
    AGENT,
    DEFAULT_HANGUP_ORDER,
    EXTERNAL_MEDIA,
    ChannelState,
)
from ivr.harness.fake_asterisk.rtp import (
    DTMF_EVENT_CODES,
    PT_TELEPHONE_EVENT,
    SAMPLES_PER_FRAME,
    Addr,
    ReceivedPacket,
    RtpPeer,
    telephone_event_payload,
)

if TYPE_CHECKING:
    from ivr.harness.fake_asterisk.server import FakeAsterisk


class FakeCall:
    """One inbound call: what the caller does (keys, audio, hang-up) and what they heard."""

    def __init__(self, fake: FakeAsterisk, channel: ChannelState) -> None:
        self._fake = fake
        self._pbx = fake.pbx
        self.channel = channel

    @property
    def channel_id(self) -> str:
        return self.channel.id

    def _met(self, kind: str) -> list[ChannelState]:
        channels = [self._pbx.channels[cid] for cid in self.channel.met]
        return [ch for ch in channels if ch.kind == kind]

    def _peers(self) -> list[RtpPeer]:
        return [ch.rtp for ch in self._met(EXTERNAL_MEDIA) if ch.rtp is not None]

    @property
    def media(self) -> RtpPeer | None:
        """The RTP peer of the (latest) external-media channel bridged with the caller."""
        peers = self._peers()
        return peers[-1] if peers else None

    @property
    def agent(self) -> ChannelState | None:
        """The (latest) agent channel bridged with the caller."""
        agents = self._met(AGENT)
        return agents[-1] if agents else None

    def received_rtp(self) -> list[ReceivedPacket]:
        """Datagrams the app sent to this call's external-media socket(s), in arrival order."""
        return [p for peer in self._peers() for p in peer.received]

    def prompt_audio(self) -> bytes:
        """Payloads of the received RTP packets of the stream's payload type."""
        return b"".join(
            p.payload
            for peer in self._peers()
            for p in peer.received
            if p.header is not None and p.header.payload_type == peer.payload_type
        )

    def _require_peer(self) -> RtpPeer:
        peer = self._pbx.bridge_peer(self.channel)
        if peer is None:
            raise RuntimeError(
                f"call {self.channel_id}: no external-media channel in a mixing bridge with it"
            )
        return peer

    # -- what the caller does -----------------------------------------------------------------
    async def press(self, digit: str, duration_ms: int = 100) -> None:
        """The caller presses ``digit``: ``ChannelDtmfReceived`` (at the end of the digit)."""
        key = _dtmf_key(digit)
        if self.channel.destroyed:
            raise RuntimeError(f"call {self.channel_id} has hung up")
        self._pbx.emit_channel(
            self.channel, "ChannelDtmfReceived", {"digit": key, "duration_ms": duration_ms}
        )
        await self._fake.flush_events()

    async def hangup(
        self,
        cause: int = 16,
        *,
        order: Sequence[str] = DEFAULT_HANGUP_ORDER,
        duplicate: bool | Collection[str] = False,
    ) -> None:
        """The caller hangs up (a BYE): it leaves its bridge and is destroyed.

        ``order``: the order of ``ChannelHangupRequest``, ``StasisEnd``, ``ChannelDestroyed``
        and optionally ``ChannelLeftBridge`` (else just before ``StasisEnd`` if bridged); an
        event left out is never sent. ``duplicate``: True sends every event twice in a row, or
        name the ones to repeat. With the default order a caller's events end at
        ``StasisEnd``, as on Asterisk 22; an order given explicitly is sent as given.
        """
        await self._hang_up(self.channel, cause, order, duplicate)

    async def hangup_agent(self, cause: int = 16) -> None:
        """The agent bridged with this caller hangs up."""
        if self.agent is None:
            raise RuntimeError(f"no agent to hang up for call {self.channel_id}")
        await self._hang_up(self.agent, cause, DEFAULT_HANGUP_ORDER, False)

    async def _hang_up(
        self, ch: ChannelState, cause: int, order: Sequence[str], duplicate: bool | Collection[str]
    ) -> None:
        if ch.destroyed:
            raise RuntimeError(f"channel {ch.id} is already destroyed")
        faithful = tuple(order) == DEFAULT_HANGUP_ORDER and not duplicate
        self._pbx.terminate(ch, cause, order=order, duplicate=duplicate, faithful=faithful)
        await self._fake.flush_events()

    async def send_audio(
        self,
        n_frames: int = 1,
        *,
        drop: Collection[int] = (),
        duplicate: Collection[int] = (),
        reorder: Iterable[tuple[int, int]] = (),
    ) -> list[bytes]:
        """Send the next ``n_frames`` 20 ms packets of the bridge's mix to the app at once.

        Indices are 0-based within this call of ``send_audio``: ``drop`` packets are built (they
        use up a sequence number, a timestamp and audio) but never sent, ``duplicate`` ones are
        sent twice in a row, and each ``(i, j)`` in ``reorder`` swaps when packets i and j go
        out. Returns the datagrams sent, in order. Raises RuntimeError unless an external-media
        channel shares a mixing bridge with the caller.
        """
        peer = self._require_peer()
        indices = set(drop) | set(duplicate) | {i for pair in reorder for i in pair}
        if any(not 0 <= i < n_frames for i in indices):
            raise ValueError(f"packet indices must be in 0..{n_frames - 1}")
        packets = [self._pbx.next_mixed_packet(peer) for _ in range(n_frames)]
        order = list(range(n_frames))
        for i, j in reorder:
            order[i], order[j] = order[j], order[i]
        sent = [packets[i] for i in order if i not in drop for _ in range(1 + (i in duplicate))]
        for packet in sent:
            peer.send(packet)
        return sent

    async def inject_rtp(self, raw: bytes, *, from_stranger: bool = False) -> Addr:
        """Send arbitrary bytes to the app's RTP port; returns the source address used.

        By default they come from the external-media socket itself; ``from_stranger`` sends them
        from a fresh socket (another port), like a spoofing or misrouted peer.
        """
        peer = self.media
        if peer is None:
            raise RuntimeError(f"call {self.channel_id} has no external-media channel")
        if not from_stranger:
            peer.send(raw)
            return peer.local
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((self._fake.host, 0))
            s.sendto(raw, peer.remote)
            host, port = s.getsockname()[:2]
        return (str(host), int(port))

    async def also_send_dtmf_rtp(self, digit: str, *, duration_ms: int = 100) -> list[bytes]:
        """Send ``digit`` as RFC 4733 telephone-events on the call's RTP stream.

        One packet per 20 ms with growing durations (marker on the first), then three end
        packets (E bit, final duration); all share the timestamp of the next audio packet, and
        the stream's timestamp then moves on by the event's duration; all sent at once. No
        ``ChannelDtmfReceived`` is emitted: combine with :meth:`press` if wanted.
        """
        event = DTMF_EVENT_CODES[_dtmf_key(digit)]
        steps = max(1, round(duration_ms / 20))
        final = steps * SAMPLES_PER_FRAME
        if final > 0xFFFF:
            raise ValueError(f"duration_ms too long for one event: {duration_ms}")
        peer = self._require_peer()

        def packet(duration: int, *, end: bool, marker: bool) -> bytes:
            payload = telephone_event_payload(event, end=end, volume=10, duration=duration)
            return peer.build(payload, payload_type=PT_TELEPHONE_EVENT, marker=marker)

        packets = [packet(k * SAMPLES_PER_FRAME, end=False, marker=k == 1) for k in range(1, steps)]
        packets += [packet(final, end=True, marker=steps == 1 and r == 0) for r in range(3)]
        peer.timestamp = (peer.timestamp + final) & 0xFFFFFFFF
        for data in packets:
            peer.send(data)
        return packets

    # -- waiting ----------------------------------------------------------------------------
    async def wait_until_bridged(self, timeout: float = 5.0) -> RtpPeer:
        """Wait until an external-media channel shares a mixing bridge with the caller."""
        await self._fake.wait_for(
            lambda: self._pbx.bridge_peer(self.channel) is not None, timeout, "media bridge"
        )
        return self._require_peer()


def _dtmf_key(digit: str) -> str:
    key = digit.upper()
    if len(key) != 1 or key not in DTMF_EVENT_CODES:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return key
