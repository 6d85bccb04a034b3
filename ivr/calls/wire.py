"""What a platform must do for a call, and the one place the flow's commands reach it.

A platform (Twilio Media Streams, Asterisk ARI, ...) implements ``Wire`` for each call: four
verbs, each a plain request to put something on its wire. ``carry_out`` turns the commands a
``CallSession`` returns into those verbs, the same way for every platform; the recording
commands never get here (the session carries them out against the vault itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ivr.calls.registry import Call
from ivr.consent import Command, HandOff, HangUp, PlayPrompt, StopPrompt
from media.prompts import Prompt


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
