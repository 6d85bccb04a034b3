"""What each telephony platform can carry, phase by phase, and so what a caller may be promised.

A caller is told how to stop the recording; that sentence is only true if the platform delivers
the means at the moment the caller uses it. Each platform declares here what its wire carries
before and after the hand-off to the agent (the platform packages re-export their entry), and
``withdraw_channel`` turns that and a line's shape into the one channel the caller is told of.
The configuration checks, the prompt wording, the flow and the ROPA all read this one table.

- Twilio: the consent phase runs on a bidirectional ``<Connect><Stream>``: keys arrive, prompts
  play. A forwarded call continues with ``<Start><Stream>`` beside ``<Dial>``, which is one-way:
  Twilio delivers no keys on it and plays nothing (docs/twilio.md). A line without
  ``forward_to`` keeps the caller on the consent stream, so keys keep working.
- Asterisk: the caller's channel stays in our Stasis application for the whole call; keys
  arrive as ``ChannelDtmfReceived`` and prompts play into the bridge, before and after the agent
  joins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class WithdrawChannel(StrEnum):
    """How a caller can stop the recording once it runs."""

    KEYS = "keys"  # the withdraw key, at any time in the call
    AGENT = "agent"  # ask the agent, who stops it through the API (`ivr calls withdraw`)
    NONE = "none"  # the lawful basis gives no withdrawal during the call


@dataclass(frozen=True, slots=True)
class Capabilities:
    platform: str
    keys_in_consent_phase: bool
    keys_after_hand_off: bool  # does a key pressed while talking to the agent reach us?
    plays_after_hand_off: bool  # can we still play a prompt to the caller then?
    connects_agent: bool


TWILIO = Capabilities(
    platform="twilio",
    keys_in_consent_phase=True,
    keys_after_hand_off=False,
    plays_after_hand_off=False,
    connects_agent=True,
)
ASTERISK = Capabilities(
    platform="asterisk",
    keys_in_consent_phase=True,
    keys_after_hand_off=True,
    plays_after_hand_off=True,
    connects_agent=True,
)

PLATFORMS: Mapping[str, Capabilities] = MappingProxyType(
    {c.platform: c for c in (TWILIO, ASTERISK)}
)


def keys_reach_us_while_recording(caps: Capabilities, *, hands_off: bool) -> bool:
    """Whether the withdraw key works for the whole recording on this platform: a line that
    hands off needs keys after the hand-off; one that keeps the caller needs them in the
    consent phase, which is where the caller stays."""
    return caps.keys_after_hand_off if hands_off else caps.keys_in_consent_phase


def withdraw_channel(
    caps: Capabilities,
    *,
    withdrawable: bool,
    hands_off: bool,
    configured: WithdrawChannel | None = None,
) -> WithdrawChannel:
    """The channel a caller of this line, on this platform, is told of. ``configured`` is the
    line's ``withdraw_via`` when set; the configuration checks refuse one the platform cannot
    honour (``channel_error``), so here it is simply taken."""
    if not withdrawable:
        return WithdrawChannel.NONE
    if configured is not None:
        return configured
    if keys_reach_us_while_recording(caps, hands_off=hands_off):
        return WithdrawChannel.KEYS
    return WithdrawChannel.AGENT


def channel_error(
    caps: Capabilities, channel: WithdrawChannel, *, withdrawable: bool, hands_off: bool
) -> str | None:
    """Why ``channel`` cannot be promised on this platform for such a line, or None."""
    if not withdrawable:
        if channel is not WithdrawChannel.NONE:
            return "its lawful basis gives no withdrawal during the call; leave withdraw_via unset"
        return None
    if channel is WithdrawChannel.NONE:
        return (
            "its lawful basis lets the caller withdraw or object at any time; withdraw_via "
            'cannot be "none"'
        )
    if channel is WithdrawChannel.KEYS and not keys_reach_us_while_recording(
        caps, hands_off=hands_off
    ):
        return (
            f"on {caps.platform} no key reaches the service after the call is forwarded "
            '(set withdraw_via = "agent", or serve the line on a platform that carries keys)'
        )
    if channel is WithdrawChannel.AGENT and not hands_off:
        return 'there is no agent on a line without forward_to (withdraw_via = "keys")'
    return None
