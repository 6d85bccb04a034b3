"""A prompt played at the pace of call time: which 20 ms frames are due now.

A platform that sends audio itself asks ``due(now)`` whenever it wakes and sends what it
returns; the prompt is over when ``finished``. A frame is due once call time reaches its slot,
so a late wake-up sends what it missed at once. RTP sends frames one ahead of the call time
(``due(now)`` includes the frame whose slot starts now: the next 20 ms is on its way while the
current one plays); Twilio's Media Streams buffer what they are sent, so a Twilio stream asks a
few hundred ms ahead (``due(now + lead)``) in batches, each sent as one message, which keeps the
first frame of every call quick to leave under load without sending a whole prompt into one
socket at once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from media.prompts import Prompt, prompt_frames

FRAME_MS = 20


@functools.lru_cache(maxsize=512)
def shared_frames(prompt: Prompt) -> tuple[bytes, ...]:
    """A prompt's 20 ms frames, made once per prompt and shared by every call playing it."""
    return tuple(prompt_frames(prompt))


@dataclass(eq=False)
class PacedPrompt:
    """One call's place in a prompt's frames, which it shares with every other call (a prompt
    of 24 s is 1,200 frames: copied per call, that would be most of a call's memory)."""

    play_id: int
    frames: Sequence[bytes]
    started_at: float  # call time of the next frame's slot
    sent: int = 0  # frames sent so far

    @classmethod
    def start(cls, prompt: Prompt, play_id: int, now: float) -> PacedPrompt:
        return cls(play_id, shared_frames(prompt), now)

    @property
    def finished(self) -> bool:
        return self.sent >= len(self.frames)

    @property
    def remaining(self) -> int:
        return len(self.frames) - self.sent

    def due(self, now: float) -> Sequence[bytes]:
        """The frames to send at call time ``now`` (none before their slot)."""
        count = int((now - self.started_at) * 1000 // FRAME_MS) + 1
        if count <= 0:
            return ()
        out = self.frames[self.sent : self.sent + count]
        self.sent += len(out)
        self.started_at += len(out) * FRAME_MS / 1000
        return out
