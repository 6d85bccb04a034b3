"""Caller and agent audio for the simulated Twilio: looped 20 ms frames of 8 kHz μ-law.

A source is indexed by frame number (20 ms of call time each) and loops forever, so every stream
that carries the same track at the same call time carries the same audio. Frames are encoded
once, base64 included, so fast-mode calls spend their time on the socket, not on numpy.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence

import numpy as np

from media.g711 import ULAW_SILENCE, ulaw_encode
from media.pcm import float_to_int16, frame, resample, to_mono
from media.wavfile import load_audio

SAMPLE_RATE = 8000
FRAME_BYTES = 160  # 20 ms of 8 kHz G.711


class LoopedFrames:
    """A finite list of 160-byte μ-law frames (``media.pcm.frame``'s) played in a loop."""

    def __init__(self, frames: Sequence[bytes], label: str) -> None:
        if not frames:
            raise ValueError(f"{label}: no audio frames")
        self._frames = tuple(bytes(f) for f in frames)
        self._payloads = tuple(base64.b64encode(f).decode("ascii") for f in self._frames)

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def seconds(self) -> float:
        return len(self._frames) * FRAME_BYTES / SAMPLE_RATE

    def frame(self, index: int) -> bytes:
        """The μ-law bytes of frame ``index`` (any integer; the source loops)."""
        return self._frames[index % len(self._frames)]

    def payload(self, index: int) -> str:
        """``frame(index)`` as base64, ready for a Media Streams ``media.payload``."""
        return self._payloads[index % len(self._payloads)]


def _from_float(samples: np.ndarray, label: str) -> LoopedFrames:
    return LoopedFrames(frame(ulaw_encode(float_to_int16(samples))), label)


def tone(freq_hz: float = 440.0, dbfs: float = -12.0, seconds: float = 1.0) -> LoopedFrames:
    """A sine tone at ``dbfs`` (peak, relative to full scale).

    The loop is ``seconds`` long, rounded to whole frames; with the default one second any whole
    number of hertz loops without a click.
    """
    if not 0 < freq_hz < SAMPLE_RATE / 2:
        raise ValueError(f"tone frequency must be between 0 and 4000 Hz, got {freq_hz}")
    if not dbfs <= 0:
        raise ValueError(f"tone level must be at most 0 dBFS, got {dbfs}")
    n_frames = max(1, round(seconds * SAMPLE_RATE / FRAME_BYTES))
    t = np.arange(n_frames * FRAME_BYTES) / SAMPLE_RATE
    samples = 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq_hz * t)
    return _from_float(samples, f"tone {freq_hz:g} Hz at {dbfs:g} dBFS")


def silence() -> LoopedFrames:
    return LoopedFrames([bytes([ULAW_SILENCE]) * FRAME_BYTES], "silence")


def from_file(path: str | os.PathLike[str]) -> LoopedFrames:
    """Any audio file libsndfile reads, down-mixed, resampled to 8 kHz and μ-law encoded.

    Raises ``media.wavfile.UnsupportedAudio`` for files the service would not accept either.
    """
    samples, rate = load_audio(path)
    mono = to_mono(samples)
    at_8k = resample(mono, rate, SAMPLE_RATE)
    return _from_float(at_8k, f"{os.fspath(path)} ({len(at_8k) / SAMPLE_RATE:.2f} s)")
