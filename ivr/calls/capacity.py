"""The cap on calls in progress ([limits] max_calls), the same for every platform.

A platform asks :func:`full` before it opens a call. When the service is full the call is turned
away at once, before any prompt or recording: the platform answers in its own way (Twilio:
TwiML that puts the caller through unrecorded or rejects the call as busy; Asterisk: back to
the dialplan with ``IVR_ERROR=busy``) and :func:`turn_away` keeps the call's row, outcome
``busy``, so that the refusal is on record (and the caller's number, sealed, for the usual
call_record_days).

The check and the registration are one step for the event loop: a platform calls :func:`full`
and then ``CallRegistry.open`` with no await between, and the registry counts a call from the
moment ``open`` starts (before its catalog row is written), so calls arriving at the same
instant cannot pass the cap together.
"""

from __future__ import annotations

import asyncio
import logging

from ivr.calls.registry import CallRegistry
from ivr.config import Line
from ivr.log_limits import Warnings
from storage.files import utc_iso

log = logging.getLogger(__name__)

BUSY = "busy"  # the outcome stored, and Asterisk's IVR_ERROR


def full(registry: CallRegistry, max_calls: int) -> bool:
    """Whether a new call would pass ``max_calls`` calls in progress (all platforms)."""
    return len(registry) >= max_calls


_warnings = Warnings(log)  # ivr/log_limits.py: one warning a minute while calls are turned away


async def turn_away(
    registry: CallRegistry,
    *,
    platform: str,
    platform_call_id: str,
    line: Line,
    caller: str | None,
) -> str | None:
    """Record a call turned away because the service is full: its row, ended at once with
    outcome ``busy``. The row's id, or None when it could not be written (the caller is
    answered all the same; the failure is logged)."""
    in_progress = len(registry)
    _warnings.warn(
        "turned-away",
        "at the call cap ([limits] max_calls, %d calls in progress): turning calls away",
        in_progress,
    )
    vault = registry.vault
    reason = f"turned away: {in_progress} calls in progress ([limits] max_calls)"

    def write() -> str:
        call_id = vault.open_call(
            tenant=line.tenant,
            platform=platform,
            platform_call_id=platform_call_id,
            line=line.policy_id,
            caller=caller,
        )
        vault.catalog.update_call(
            call_id, ended_at=utc_iso(registry.clock()), outcome=BUSY, end_reason=reason
        )
        return call_id

    try:
        call_id = await asyncio.to_thread(write)
    except Exception as exc:  # a full disk must not turn a refusal into an error answer
        log.warning(
            "%s call %s turned away; its row could not be written: %s",
            platform,
            platform_call_id,
            exc,
        )
        return None
    log.info("call %s: %s %s turned away (%s)", call_id, platform, platform_call_id, reason)
    return call_id
