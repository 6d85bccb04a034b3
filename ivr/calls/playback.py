"""A prompt played at the pace of call time: which 20 ms frames are due now.

A platform that sends audio itself (RTP) asks ``due(now)`` whenever it wakes and sends what it
returns; the prompt is over when ``finished``. Frames go out one ahead of the call time (the
next 20 ms is on its way while the current one plays), so the far end does not run dry for the
want of a wake-up exactly on a frame boundary; a late wake-up sends what it missed at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from media.prompts import Prompt, prompt_frames

FRAME_MS = 20


@dataclass(eq=False)
class PacedPrompt:
    play_id: int
    frames: deque[bytes]
    started_at: float  # call time of the next frame's slot

    @classmethod
    def start(cls, prompt: Prompt, play_id: int, now: float) -> PacedPrompt:
        return cls(play_id, deque(prompt_frames(prompt)), now)

    @property
    def finished(self) -> bool:
        return not self.frames

    def due(self, now: float) -> list[bytes]:
        """The frames to send at call time ``now`` (none before their slot)."""
        count = int((now - self.started_at) * 1000 // FRAME_MS) + 1
        out = []
        while self.frames and count > 0:
            out.append(self.frames.popleft())
            count -= 1
        self.started_at += len(out) * FRAME_MS / 1000
        return out
