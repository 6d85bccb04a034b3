"""What a platform must do for a call, and the one place the flow's commands reach it.

A platform (Twilio Media Streams, Asterisk ARI, ...) implements ``Wire`` for each call: four
verbs, each a plain request to put something on its wire. ``carry_out`` turns the commands a
``CallSession`` returns into those verbs, the same way for every platform; the recording
commands never get here (the session carries them out against the vault itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ivr.calls.registry import Call
from ivr.consent import Command, HandOff, HangUp, PlayPrompt, StopPrompt, WithdrawalRequested
from media.prompts import Prompt
from storage.catalog import RecordingRow


class Wire(Protocol):
    """One call's connection to its platform."""

    async def play(self, prompt: Prompt, play_id: int) -> None:
        """Start playing ``prompt`` to the caller; report its end as PromptFinished(play_id)."""

    async def stop_playing(self) -> None:
        """Stop the prompt playing now (a key was pressed during it)."""

    async def hand_off(self, recording: bool) -> None:
        """The consent phase is over: connect the caller onwards (the line's agent, if it has
        one), recording the conversation only if ``recording``."""

    async def hang_up(self, reason: str) -> None:
        """End the call for the caller."""


class NotWithdrawable(Exception):
    """A withdrawal that cannot happen: the message says why (for the API's 409)."""


@dataclass(frozen=True, slots=True)
class Withdrawn:
    call_id: str
    recording: RecordingRow | None  # the stopped recording: discarded, or kept per policy


async def withdraw_for_caller(call: Call, by: str) -> Withdrawn:
    """Stop the call's recording on the caller's behalf (the agent they told, where keys do
    not reach us): the same step as the withdraw key, recorded in the evidence as ``by``.
    Raises NotWithdrawable when there is nothing to stop or the basis gives no withdrawal."""
    session = call.session
    if session is None or session.ended or call.finished:
        raise NotWithdrawable("the call is not in progress")
    if not session.flow.policy.withdrawable:
        raise NotWithdrawable(
            f"lawful basis {call.line.lawful_basis.value!r} gives no withdrawal during the call"
        )
    if not session.recording_allowed:
        raise NotWithdrawable("nothing is being recorded on this call")
    commands = await session.handle(WithdrawalRequested(at=session.now_event(), by=by))
    if call.wire is not None:
        await carry_out(call, call.wire, commands)
    return Withdrawn(call.call_id, session.row)


async def carry_out(call: Call, wire: Wire, commands: Sequence[Command]) -> None:
    session = call.session
    assert session is not None, "commands come from a session"
    for command in commands:
        if isinstance(command, PlayPrompt):
            await wire.play(session.prompts[command.prompt_id], command.play_id)
        elif isinstance(command, StopPrompt):
            await wire.stop_playing()
        elif isinstance(command, HandOff):
            await wire.hand_off(command.recording)
        elif isinstance(command, HangUp):
            call.hung_up = True
            call.ended_by(f"service hung up: {command.reason}")
            await wire.hang_up(command.reason)
