"""What the real-Asterisk tests check about audio: what the caller heard, what was recorded.

Every frame a test party sends is a distinct pseudo-random μ-law pattern (``sip.pattern_frame``),
so a recording is checked frame by frame, bit-exact: it must hold nothing but that party's
frames, in the order they were sent, without a gap, starting no earlier than the moment
recording became lawful and running to the end of the call. μ-law has two codes for zero
(0x7F, 0xFF) that a mixing bridge merges, so both sides are compared with 0x7F read as 0xFF.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ivr.config import load_config
from ivr.prompt_library import CACHE_ENV, PromptLibrary
from media.prompts import Prompt, prompt_frames
from tests.asterisk.sip import FRAME_MS, PT_PCMU, Received, RtpPeer, Sent, is_silence

DEMO = Path(__file__).resolve().parents[2] / "ivr" / "demo.toml"
_ZERO = bytes.maketrans(b"\x7f", b"\xff")


def norm(payload: bytes) -> bytes:
    return payload.translate(_ZERO)


@functools.cache
def _prompts() -> PromptLibrary:
    """The demo's prompts, from the cache the service under test uses (tests/conftest.py sets
    IVR_PROMPT_CACHE for this process and the ``ivr serve`` it starts)."""
    return PromptLibrary.load(load_config(DEMO, {}), Path(os.environ[CACHE_ENV]))


def prompt(line: str, prompt_id: str) -> Prompt:
    """What a caller of the demo ``line`` hears as ``prompt_id`` over Asterisk."""
    library = _prompts()
    return library.calls[(line, "asterisk")][prompt_id]


def voiced(frames: Sequence[bytes]) -> list[bytes]:
    """The frames that are not silence, normalised: what a listener would notice."""
    return [norm(f) for f in frames if not is_silence(f)]


def heard(received: Sequence[Received]) -> list[bytes]:
    return voiced([r.payload for r in received if r.pt == PT_PCMU])


@dataclass(frozen=True)
class Heard:
    prompt_id: str
    whole: bool  # played to the end (else: cut short by a key, at least min_ms of it)
    min_ms: int = 0
    # Played while the agent is in the bridge: Asterisk then mixes (bridge_softmix), which
    # re-cuts the audio into its own 20 ms frames, so it is compared as a byte stream.
    mixed: bool = False


def assert_heard(received: Sequence[Received], line: str, expected: Sequence[Heard]) -> None:
    """The caller heard exactly these prompts, in this order, bit-exact: each whole, or a
    prefix of it (a key cut it short), and no other audio. Prompts played into a mixing
    bridge must be found, 20 ms at a time and in order, in the audio stream that followed."""
    got = heard(received)
    pos = 0
    for n, item in enumerate(expected):
        frames = voiced(prompt_frames(prompt(line, item.prompt_id)))
        if item.mixed:
            _assert_in_stream(b"".join(got[pos:]), line, expected[n:])
            return
        if item.whole:
            part = got[pos : pos + len(frames)]
            assert part == frames, (
                f"{item.prompt_id}: {_first_difference(part, frames)} "
                f"(heard {len(got)} voiced frames in all)"
            )
            pos += len(frames)
        else:
            n = 0
            while pos + n < len(got) and n < len(frames) and got[pos + n] == frames[n]:
                n += 1
            assert n * FRAME_MS >= item.min_ms, (
                f"{item.prompt_id}: only {n * FRAME_MS} ms heard before something else"
            )
            pos += n
    assert pos == len(got), (
        f"{len(got) - pos} voiced frames heard beyond the expected prompts ({identify(got[pos:])})"
    )


def identify(frames: Sequence[bytes]) -> str:
    """Which prompts 5 ms pieces of these frames come from: for a failing test's message."""
    streams = {
        f"{line}/{platform}/{pid}": b"".join(voiced(prompt_frames(p)))
        for (line, platform), prompts in _prompts().calls.items()
        for pid, p in prompts.items()
    }
    seen: dict[str, int] = {}
    for frame in frames:
        for i in range(0, len(frame), CHUNK):
            piece = frame[i : i + CHUNK]
            name = next((n for n, st in streams.items() if st.find(piece) >= 0), "unknown")
            seen[name] = seen.get(name, 0) + 1
    return ", ".join(f"{n}: {k} pieces" for n, k in sorted(seen.items()))


def _assert_in_stream(stream: bytes, line: str, expected: Sequence[Heard]) -> None:
    at = 0
    for item in expected:
        assert item.whole, "a prompt cut short in a mixing bridge is not checked"
        frames = voiced(prompt_frames(prompt(line, item.prompt_id)))
        found = 0
        for frame in frames:
            where = stream.find(frame, at)
            if where >= 0:
                found += 1
                at = where + len(frame)
        # A frame the mixer split with a moment of its own silence is not found whole.
        assert found >= 0.95 * len(frames), (
            f"{item.prompt_id}: {found} of {len(frames)} frames heard through the mixing bridge"
        )


def _first_difference(got: Sequence[bytes], want: Sequence[bytes]) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"frame {i} differs"
    return f"{len(got)} frames heard of {len(want)}"


@dataclass(frozen=True)
class Span:
    """The sent frames found in a recording: their first and last send times and count."""

    first: Sent
    last: Sent
    count: int


# Asterisk mutes a channel's audio while it handles an RFC 4733 key, and for a moment after the
# key's end: frames sent then never reach the bridge (seen: up to 160 ms after the end).
KEY_MUTE_AFTER = 0.3


def find_in_recording(recorded: Sequence[bytes], peer: RtpPeer) -> Span | None:
    """Where one party's frames are in a recording; asserts they are in order and unbroken,
    but for frames sent while Asterisk muted the channel for an RFC 4733 key.

    Returns None when none of them is there."""
    sent = peer.sent
    by_payload = {norm(s.payload): s for s in sent if s.index >= 0}
    by_index = {s.index: s for s in sent if s.index >= 0}
    found = [by_payload.get(f) for f in voiced(recorded)]
    mine = [s for s in found if s is not None]
    if not mine:
        return None

    def muted(index: int) -> bool:
        at = by_index[index].at
        return any(start <= at <= end + KEY_MUTE_AFTER for start, end in peer.keys)

    indexes = [s.index for s in mine]
    gaps = [
        (a, b)
        for a, b in itertools.pairwise(indexes)
        if b != a + 1 and not (b > a and all(muted(i) for i in range(a + 1, b)))
    ]
    assert not gaps, f"frames missing or out of order in the recording: {gaps[:5]}"
    return Span(mine[0], mine[-1], len(mine))


def assert_only_parties(recorded: Sequence[bytes], *parties: Sequence[Sent]) -> None:
    """Nothing in the recording but these parties' frames (no prompt, no noise, no tones)."""
    known = {norm(s.payload) for sent in parties for s in sent if s.index >= 0}
    foreign = [i for i, f in enumerate(voiced(recorded)) if f not in known]
    assert not foreign, f"{len(foreign)} voiced frames in the recording that nobody sent"


CHUNK = 40  # 5 ms of μ-law


def found_in_stream(recorded: Sequence[bytes], sent: Sequence[Sent]) -> float:
    """The share of one party's audio (5 ms pieces) found, in order, in audio that went
    through a mixing bridge. The mixer cuts its own 20 ms frames on its own clock and, when a
    packet comes late, fills that moment with silence: a frame may arrive split in two, so it
    is searched piece by piece."""
    stream = b"".join(norm(f) for f in recorded)
    at = found = total = 0
    for s in sent:
        if s.index < 0:
            continue
        payload = norm(s.payload)
        for i in range(0, len(payload), CHUNK):
            total += 1
            where = stream.find(payload[i : i + CHUNK], at)
            if where >= 0:
                found += 1
                at = where + CHUNK
    return found / total if total else 1.0
