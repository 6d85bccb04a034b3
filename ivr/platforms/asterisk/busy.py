"""An Asterisk call over the call cap ([limits] max_calls): back to the dialplan at once.

The channel is handed back with ``IVR_ERROR=busy`` (hung up with cause congestion should that
fail), so the PBX decides what the caller gets (a queue without recording, a busy message); the
call's row is kept with outcome ``busy`` (:func:`ivr.calls.capacity.turn_away`). docs/asterisk.md,
"At the call cap".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ivr.calls import capacity
from ivr.calls.capacity import full
from ivr.config import Line

if TYPE_CHECKING:
    from ivr.platforms.asterisk.app import AriApplication

__all__ = ["full", "turn_away"]


async def turn_away(
    app: AriApplication, platform: str, channel_id: str, line: Line, caller: str | None
) -> bool:
    """Turn the call on ``channel_id`` away (``caller``: the caller's number, E.164, for the
    row); True when the dialplan has the channel again."""
    app.counters["calls_turned_away"] += 1
    await capacity.turn_away(
        app.registry,
        platform=platform,
        platform_call_id=channel_id,
        line=line,
        caller=caller,
    )
    return await app.hand_back(channel_id, capacity.BUSY)
