"""A fake Asterisk 22 that speaks ARI and external-media RTP to a Stasis application.

For tests and for ``ivr simulate --platform asterisk`` and ``ivr loadtest --platform
asterisk``. It serves only the part of ARI the service calls (``ivr/platforms/asterisk/ari.py``;
the routes are in ``FakeAsterisk.start``), checks requests the way Asterisk does (statuses and
messages in ``{"message": ...}``; HTTP Basic auth), and plays the telephone side of each call:
the caller's channel enters Stasis, its audio reaches the app as RTP once the app bridges an
external-media channel with it, and the app's RTP (our prompts) is recorded.

- ``server``: REST and events, and the driver's API (``FakeAsterisk``);
- ``model``: channels and bridges, and the events each change makes (``Pbx``);
- ``rtp``: each external-media channel's RTP peer, and RTP/RFC 4733 written independently of
  ``media/`` (the tests' oracle; see its docstring);
- ``call``: the driver's handle on a call (``FakeCall``: keys, audio, hang-up, what was heard).

The rules that the service depends on, checked against a real Asterisk by
tests/asterisk/test_fake_contract.py: an external-media channel raises ``ChannelStateChange``
and then ``StasisStart``, mostly after the reply to its request (now and then before it, a race
the test leaves out: ``media_stasis_before_reply``), and ``addChannel`` refuses it with 422
until then; a new channel id that is a prefix of a live one is refused (500 on externalMedia,
409 on originate); an app's ``DELETE`` emits ``ChannelHangupRequest`` (``soft``),
``ChannelLeftBridge`` (if bridged), ``StasisEnd``, ``ChannelDestroyed``; a caller (a channel
that came in by ``Stasis()``) gets nothing after its ``StasisEnd``. The newest events socket for
an app gets its events (the older one is sent ``ApplicationReplaced``); events that happen while
nobody listens are lost; REST keeps working.

Media: each external-media channel owns a UDP socket (its ``UNICASTRTP_LOCAL_*`` variables).
While it is in a mixing bridge it sends, from that socket to ``external_host``, the μ-law mix
of every other member with a voice (the caller, answered agents) as 20 ms RTP when the driver
calls ``FakeCall.send_audio`` (``ivr simulate --platform asterisk`` does so every 20 ms in real
time, or frame by frame in fast mode).
"""

from ivr.harness.fake_asterisk.call import FakeCall as FakeCall
from ivr.harness.fake_asterisk.rtp import PT_PCMU as PT_PCMU
from ivr.harness.fake_asterisk.rtp import PT_TELEPHONE_EVENT as PT_TELEPHONE_EVENT
from ivr.harness.fake_asterisk.rtp import RtpPeer as RtpPeer
from ivr.harness.fake_asterisk.rtp import build_rtp as build_rtp
from ivr.harness.fake_asterisk.rtp import mix_frames as mix_frames
from ivr.harness.fake_asterisk.rtp import parse_addr as parse_addr
from ivr.harness.fake_asterisk.rtp import parse_rtp as parse_rtp
from ivr.harness.fake_asterisk.rtp import telephone_event_payload as telephone_event_payload
from ivr.harness.fake_asterisk.server import FakeAsterisk as FakeAsterisk
from ivr.harness.fake_asterisk.server import RecordedRequest as RecordedRequest
