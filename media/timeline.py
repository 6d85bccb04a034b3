"""Lay timestamped frames of coded audio onto one PCM timeline per track.

Frames carry their own start time, so a gap between frames becomes silence and two tracks line
up however their frames were interleaved. The work is done a batch of frames at a time with
numpy (one decode and one scatter per batch), which keeps an hour of stereo well under a second.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import numpy.typing as npt

from media.g711 import alaw_decode, ulaw_decode

SAMPLE_BYTES = {"pcmu": 1, "pcma": 1, "l16": 2}
_BATCH = 4096


class TimedFrame(Protocol):
    track: int
    timestamp_ms: int
    payload: bytes


def decode(codec: str, data: bytes) -> npt.NDArray[np.int16]:
    if codec == "pcmu":
        return ulaw_decode(data)
    if codec == "pcma":
        return alaw_decode(data)
    if codec == "l16":
        return np.frombuffer(data, dtype="<i2").astype(np.int16)
    raise ValueError(f"unknown codec {codec!r}")


class Timeline:
    """A growing (samples, tracks) int16 array that frames are written into."""

    def __init__(self, codec: str, sample_rate: int, n_tracks: int) -> None:
        if codec not in SAMPLE_BYTES:
            raise ValueError(f"unknown codec {codec!r}")
        self.codec = codec
        self.sample_rate = sample_rate
        self.n_tracks = n_tracks
        self._audio = np.zeros((0, n_tracks), dtype=np.int16)
        self.length = 0

    def add(self, frames: Iterable[TimedFrame]) -> None:
        batch: list[TimedFrame] = []
        for frame in frames:
            batch.append(frame)
            if len(batch) == _BATCH:
                self._add_batch(batch)
                batch = []
        if batch:
            self._add_batch(batch)

    def _add_batch(self, batch: list[TimedFrame]) -> None:
        width = SAMPLE_BYTES[self.codec]
        samples = decode(self.codec, b"".join(f.payload for f in batch))
        lengths = np.fromiter((len(f.payload) // width for f in batch), np.int64, len(batch))
        starts = np.fromiter(
            (f.timestamp_ms * self.sample_rate // 1000 for f in batch), np.int64, len(batch)
        )
        tracks = np.fromiter((f.track for f in batch), np.int64, len(batch))
        if tracks.size and (tracks.min() < 0 or tracks.max() >= self.n_tracks):
            raise ValueError("frame names a track outside the timeline")
        end = int((starts + lengths).max(initial=0))
        self._grow(end)
        # Sample i of the batch goes to its frame's start plus its offset within the frame.
        first = np.cumsum(lengths) - lengths
        position = np.arange(samples.size, dtype=np.int64) + np.repeat(starts - first, lengths)
        self._audio[position, np.repeat(tracks, lengths)] = samples[: position.size]
        self.length = max(self.length, end)

    def _grow(self, end: int) -> None:
        if end <= self._audio.shape[0]:
            return
        capacity = max(end, 2 * self._audio.shape[0])
        grown = np.zeros((capacity, self.n_tracks), dtype=np.int16)
        grown[: self._audio.shape[0]] = self._audio
        self._audio = grown

    def samples(self) -> npt.NDArray[np.int16]:
        return self._audio[: self.length]
