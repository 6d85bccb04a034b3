"""Spoken prompts played to callers: loading, validation and framing for the 8 kHz μ-law leg.

A prompt is the notice a caller hears before (and while) a call is recorded, so a prompt that
cannot be heard is a notice that was never given. Every prompt therefore passes through
``prompt_from_audio`` (``load_prompt`` for a file), which converts whatever the author supplied
(any rate, mono or stereo) to the exact 8 kHz μ-law audio that will be played and refuses audio
that is too short, too long or near-silent.

Prompts come from two places: a tenant's own recordings (files named in the configuration) and
speech synthesised from the wording of each line (``media.tts``, a content-addressed cache).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from media.g711 import ULAW_SILENCE, ulaw_encode
from media.pcm import float_to_int16, frame, resample, to_mono
from media.wavfile import UnsupportedAudio, load_audio

__all__ = [
    "FRAME_BYTES",
    "LANGUAGES",
    "MAX_DURATION_S",
    "MIN_DURATION_S",
    "MIN_PEAK_DBFS",
    "PROMPT_IDS",
    "SAMPLE_RATE",
    "Prompt",
    "PromptError",
    "load_prompt",
    "prompt_frames",
    "prompt_from_audio",
    "prompt_from_ulaw",
]

# Every prompt the call flow can play (their words: ivr.wording).
PROMPT_IDS: tuple[str, ...] = (
    "consent_request",  # opt-in: asked, with the accept and decline keys
    "objection_notice",  # opt-out: told, with the key that objects
    "notice_only",  # notice: told, no choice
    "recording_started",
    "not_recording",
    "recording_stopped",
    "invalid_key",
    "recording_limit",
    "unknown_number",
)
LANGUAGES: tuple[str, ...] = ("en", "sv")

# The telephone leg: 8 kHz G.711 μ-law sent in 20 ms frames of 160 bytes.
SAMPLE_RATE = 8000
FRAME_BYTES = 160
BYTES_PER_MS = SAMPLE_RATE // 1000

MIN_DURATION_S = 0.2
MAX_DURATION_S = 120.0
# Below this peak level the prompt is inaudible on a phone line (and is almost certainly a
# mistake such as an empty recording or the wrong file).
MIN_PEAK_DBFS = -40.0


class PromptError(ValueError):
    """Prompt audio that cannot be used; the message is one line."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt as it will be played: 8 kHz μ-law, a whole number of 160-byte frames."""

    id: str
    language: str
    text: str
    # The exact bytes sent to the caller; the last frame is padded with μ-law silence (0xFF).
    ulaw: bytes = field(repr=False)
    # Hex SHA-256 of ``ulaw``, i.e. of the audio actually played (not of the source file).
    sha256: str
    duration_ms: int
    source: str


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error(where: str, reason: str) -> PromptError:
    return PromptError(_one_line(f"{where}: {reason}"))


def _label(path: str | os.PathLike[str], prompt_id: str, language: str) -> str:
    return f"prompt {language}/{prompt_id} file {os.fspath(path)!r}"


def load_prompt(
    path: str | os.PathLike[str], *, prompt_id: str, language: str, text: str
) -> Prompt:
    """Load an audio file as a prompt: mono, 8 kHz, μ-law, padded to whole 160-byte frames.

    Accepts anything ``media.wavfile.load_audio`` accepts (any rate of at least 8 kHz, mono or
    stereo; stereo is mixed down). Raises ``PromptError`` naming the file if it cannot be read,
    or for any reason ``prompt_from_audio`` gives.
    """
    where = _label(path, prompt_id, language)
    _check_labels(where, prompt_id, language, text)
    try:
        samples, rate = load_audio(path)
    except UnsupportedAudio as exc:
        # The message already names the file and is one line; add which prompt it was for.
        raise PromptError(f"prompt {language}/{prompt_id}: {exc}") from exc
    return prompt_from_audio(
        samples,
        rate,
        prompt_id=prompt_id,
        language=language,
        text=text,
        source=os.fspath(path),
        where=where,
    )


def _check_labels(where: str, prompt_id: str, language: str, text: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise _error(where, "the prompt text is empty (the text spoken must be recorded)")
    if not prompt_id or not language:
        raise _error(where, "prompt id and language must be non-empty")


def prompt_from_audio(
    samples: npt.NDArray[np.floating],
    rate: int,
    *,
    prompt_id: str,
    language: str,
    text: str,
    source: str,
    where: str | None = None,
) -> Prompt:
    """Samples (frames, or frames × channels, floats in [-1, 1)) at ``rate`` as a prompt.

    Raises ``PromptError`` (naming ``where``, by default the prompt and ``source``) if ``text``
    is empty, if the audio is shorter than 0.2 s or longer than 120 s, or if its peak, as
    played, is below -40 dBFS.
    """
    where = where or f"prompt {language}/{prompt_id} from {source}"
    _check_labels(where, prompt_id, language, text)
    duration_s = samples.shape[0] / rate
    if duration_s < MIN_DURATION_S:
        raise _error(
            where, f"the audio is {duration_s:.3f} s long; at least {MIN_DURATION_S} s is required"
        )
    if duration_s > MAX_DURATION_S:
        raise _error(
            where, f"the audio is {duration_s:.1f} s long; at most {MAX_DURATION_S:g} s is allowed"
        )

    mono = to_mono(samples)
    telephone = np.nan_to_num(resample(mono, rate, SAMPLE_RATE), nan=0.0, posinf=1.0, neginf=-1.0)
    # Judge audibility on what will actually be played (after the down-mix, which can cancel
    # out-of-phase channels, and the telephone-band filter).
    peak = float(np.max(np.abs(telephone))) if telephone.size else 0.0
    peak_dbfs = 20.0 * math.log10(peak) if peak > 0.0 else -math.inf
    if peak_dbfs < MIN_PEAK_DBFS:
        shown = "-inf" if math.isinf(peak_dbfs) else f"{peak_dbfs:.1f}"
        raise _error(
            where,
            f"the audio is near-silent (peak {shown} dBFS, below {MIN_PEAK_DBFS:g} dBFS); "
            "callers would hear nothing",
        )

    ulaw = b"".join(frame(ulaw_encode(float_to_int16(telephone)), FRAME_BYTES, ULAW_SILENCE))
    return prompt_from_ulaw(ulaw, prompt_id=prompt_id, language=language, text=text, source=source)


def prompt_from_ulaw(
    ulaw: bytes, *, prompt_id: str, language: str, text: str, source: str
) -> Prompt:
    """Audio already in the played form (8 kHz μ-law, whole 160-byte frames) as a prompt; its
    SHA-256 is of exactly these bytes."""
    if not ulaw or len(ulaw) % FRAME_BYTES:
        raise _error(
            f"prompt {language}/{prompt_id} from {source}",
            f"{len(ulaw)} bytes of μ-law is not a whole number of {FRAME_BYTES}-byte frames",
        )
    return Prompt(
        id=prompt_id,
        language=language,
        text=text,
        ulaw=bytes(ulaw),
        sha256=hashlib.sha256(ulaw).hexdigest(),
        duration_ms=len(ulaw) // BYTES_PER_MS,
        source=source,
    )


def prompt_frames(prompt: Prompt) -> list[bytes]:
    """Split a prompt into the 160-byte (20 ms) μ-law frames sent on the telephone leg."""
    return frame(prompt.ulaw, FRAME_BYTES, ULAW_SILENCE)
