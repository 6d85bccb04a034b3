"""A scripted caller for the real-Asterisk tests: keys after observed events, and marks of
when things happened on the caller's side, for the recording checks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from media.prompts import prompt_frames
from tests.asterisk.checks import prompt, voiced
from tests.asterisk.sip import FRAME_MS, SipCaller


def voiced_ms(line: str, prompt_id: str) -> int:
    return len(voiced(prompt_frames(prompt(line, prompt_id)))) * FRAME_MS


@dataclass
class Driver:
    """One scripted caller: keys after observed events, marks of when things happened."""

    call: SipCaller
    line: str  # the demo line called: its prompts are what the caller should hear
    marks: dict[str, float] = field(default_factory=dict)

    def heard_ms(self) -> int:
        return self.call.rtp.audio_heard_ms()

    async def hear(self, ms: int, timeout: float = 60.0) -> None:
        try:
            await self.call.rtp.until(lambda: self.heard_ms() >= ms, f"{ms} ms heard", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc} (heard {self.heard_ms()} ms)") from None

    async def hear_prompt(self, prompt_id: str, *, after: int) -> None:
        """Wait until ``prompt_id`` has been heard in full after ``after`` ms of audio."""
        await self.hear(after + voiced_ms(self.line, prompt_id))

    async def talk(self, seconds: float) -> None:
        """Let the caller's side send ``seconds`` more audio (its own pacing: real time)."""
        target = len(self.call.rtp.sent) + round(seconds * 1000 / FRAME_MS)
        await self.call.rtp.until(lambda: len(self.call.rtp.sent) >= target, "talking", 30)

    def press(self, digit: str, how: str) -> None:
        self.marks.setdefault("key", time.monotonic())
        if how == "info":
            self.call.press_info(digit)
        else:
            self.call.press_rfc4733(digit)

    def hang_up(self) -> None:
        self.marks["hang_up"] = time.monotonic()
        self.call.hang_up()

    def last_prompt_frame_at(self) -> float:
        return self.call.rtp.received[-1].at

    async def accept(self, how: str = "info", after_ms: int = 1000) -> None:
        """Press the accept key after ``after_ms`` of the question, and hear the confirmation."""
        await self.hear(after_ms)
        self.press("1", how)
        before = self.heard_ms()
        await self.hear_prompt("recording_started", after=before)
