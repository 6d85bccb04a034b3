"""A fake Asterisk 22 that speaks ARI and external-media RTP to a Stasis application.

For tests and for the developer harness (``ivr simulate --platform asterisk``, ``ivr loadtest
--platform asterisk``). It serves, on its host (127.0.0.1 by default), the part of ARI the
service uses, checks requests the way Asterisk does, and plays the telephone side of each call:
the caller's channel enters Stasis, its audio reaches the app as RTP once the app bridges an
external-media channel with it, and the app's RTP (our prompts) is recorded.

- ``server``: REST and events, and the driver's API (``FakeAsterisk``);
- ``model``: channels and bridges, and the events each change makes (``Pbx``);
- ``rtp``: the RTP peer of each external-media channel, and RTP/RFC 4733 written independently
  of ``media/`` (the tests' oracle; see its docstring);
- ``call``: the driver's handle on a call (``FakeCall``: keys, audio, hang-up, what was heard).

REST (under ``/ari``; HTTP Basic auth or ``api_key=user:pass``; parameters in the query string,
as the service sends them):

=====================================  =========================================================
``GET /events?app=A[,B]``              events websocket (the newest socket for an app gets its
                                       events, the older one is sent ``ApplicationReplaced``)
``GET|POST /channels``                 list; originate (``endpoint``, ``app``|``extension``,
                                       ``appArgs``, ``callerId``, ``timeout``, ``channelId``)
``POST /channels/externalMedia``       ``app``, ``external_host``, ``format`` (ulaw|alaw) ...
``GET|DELETE /channels/{id}``          get; hang up (``reason``|``reason_code``)
``POST /channels/{id}/answer``         -> ``ChannelStateChange`` (state ``Up``)
``POST /channels/{id}/continue``       leaves Stasis (``StasisEnd``)
``POST /channels/{id}/variable``       set a channel variable
``GET|POST /bridges``                  list; create (``type``, ``bridgeId``, ``name``)
``DELETE /bridges/{id}``               destroy (``BridgeDestroyed``)
``POST /bridges/{id}/addChannel``      ``channel=a,b`` -> ``ChannelEnteredBridge``
=====================================  =========================================================

That is what ``ivr/platforms/asterisk/ari.py`` asks for; the rest of ARI (playbacks, removeChannel,
reading variables, ...) is not served: 404 or 405, as for any unknown path or method.

Errors: 401 ``Authentication required``; 404 ``Resource not found`` (unknown path); 405
``Invalid method``; 400 for missing/invalid parameters; 404 ``Channel not found`` / ``Bridge not
found``; 409 ``Channel not in Stasis application``; ``addChannel`` answers 400 ``Channel not
found`` and 422 ``Channel not in Stasis application`` for the channels it is given (as Asterisk
does). All error bodies are ``{"message": ...}``.

Events: every event has ``type``, ``timestamp`` (``2026-11-28T12:00:00.000+0000``),
``asterisk_id`` and ``application``. Channels created by the app (external media, agents) raise
``StasisStart`` too, like Asterisk; an external-media channel does so only after the reply to
``POST /channels/externalMedia`` (``ChannelStateChange`` first), and ``addChannel`` refuses it
with 422 until then. A new channel id that is a prefix of a live one is refused (500 on
externalMedia, 409 on originate). An app-initiated ``DELETE`` emits ``ChannelHangupRequest``
(``soft: true``), ``ChannelLeftBridge`` (if bridged), ``StasisEnd``, ``ChannelDestroyed``; a
caller (a channel that came in by ``Stasis()``) gets nothing after its ``StasisEnd``, as on
Asterisk 22. These rules are checked against a real Asterisk by
tests/asterisk/test_fake_contract.py. Events that happen while the app has no events socket are
lost (kept in ``events_dropped``), but REST keeps working.

Media: each external-media channel owns a UDP socket (its ``UNICASTRTP_LOCAL_*`` variables).
While it is in a *mixing* bridge it carries the mix of every other member with a voice (the
caller, answered agents) as RTP (PT 0 for ulaw, 8 for alaw, 160-byte payloads, seq +1, timestamp
+160, one SSRC, marker on the first packet) to ``external_host``, from that same socket. With
``pace=True`` (default) a packet goes out every 20 ms of wall time; with ``pace=False`` nothing
is sent until the driver calls ``FakeCall.send_audio``. Every datagram that reaches the socket
is recorded (arrival time, parsed header, payload, source).
"""

from ivr.harness.fake_asterisk.call import FakeCall
from ivr.harness.fake_asterisk.model import (
    DEFAULT_HANGUP_ORDER,
    BridgeState,
    ChannelState,
    FrameSource,
    format_timestamp,
)
from ivr.harness.fake_asterisk.rtp import (
    DTMF_EVENT_CODES,
    FRAME_BYTES,
    PT_PCMA,
    PT_PCMU,
    PT_TELEPHONE_EVENT,
    ReceivedPacket,
    RtpHeader,
    RtpPeer,
    RtpStats,
    build_rtp,
    mix_frames,
    parse_rtp,
    telephone_event_payload,
)
from ivr.harness.fake_asterisk.server import FakeAsterisk, RecordedRequest

__all__ = [
    "DEFAULT_HANGUP_ORDER",
    "DTMF_EVENT_CODES",
    "FRAME_BYTES",
    "PT_PCMA",
    "PT_PCMU",
    "PT_TELEPHONE_EVENT",
    "BridgeState",
    "ChannelState",
    "FakeAsterisk",
    "FakeCall",
    "FrameSource",
    "ReceivedPacket",
    "RecordedRequest",
    "RtpHeader",
    "RtpPeer",
    "RtpStats",
    "build_rtp",
    "format_timestamp",
    "mix_frames",
    "parse_rtp",
    "telephone_event_payload",
]
