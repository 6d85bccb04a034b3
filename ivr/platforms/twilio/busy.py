"""A Twilio call over the call cap ([limits] max_calls): what Twilio is told to do with it.

The caller is not left with an error: a line that forwards puts them through to its
``forward_to`` unrecorded (no consent question is needed when nothing is recorded), and a line
without one rejects the call as busy (``<Reject reason="busy"/>``: the caller hears a busy
tone, and Twilio does not bill it). The call's row is kept with outcome ``busy``
(:func:`ivr.calls.capacity.turn_away`). docs/twilio.md, "At the call cap".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ivr.calls import capacity
from ivr.calls.capacity import full
from ivr.config import Line, normalise_number
from ivr.platforms.twilio.messages import CallWebhook, twiml_dial, twiml_reject

if TYPE_CHECKING:
    from ivr.platforms.twilio.app import TwilioCalls

__all__ = ["full", "turned_away"]


async def turned_away(twilio: TwilioCalls, platform: str, hook: CallWebhook, line: Line) -> str:
    """The TwiML for a call the service has no room for; its row is kept."""
    twilio.counters["calls_turned_away"] += 1
    await capacity.turn_away(
        twilio.calls,
        platform=platform,
        platform_call_id=hook.call_sid,
        line=line,
        caller=normalise_number(hook.from_),
    )
    return twiml_dial(line.forward_to) if line.forward_to else twiml_reject("busy")
