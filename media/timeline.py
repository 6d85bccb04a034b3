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


def decode(codec: str, data: bytes | npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    if codec == "pcmu":
        return ulaw_decode(data)
    if codec == "pcma":
        return alaw_decode(data)
    if codec == "l16":
        codes = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
        return codes.view("<i2").astype(np.int16)
    raise ValueError(f"unknown codec {codec!r}")


class Timeline:
    """A growing (samples, tracks) int16 array that frames are written into."""

    def __init__(
        self, codec: str, sample_rate: int, n_tracks: int, *, expected_samples: int = 0
    ) -> None:
        if codec not in SAMPLE_BYTES:
            raise ValueError(f"unknown codec {codec!r}")
        self.codec = codec
        self.sample_rate = sample_rate
        self.n_tracks = n_tracks
        # Sized up front when the length is known, so an hour is not copied while doubling.
        self._audio = np.zeros((max(expected_samples, 0), n_tracks), dtype=np.int16)
        self.length = 0

    def add(self, frames: Iterable[TimedFrame]) -> None:
        batch: list[TimedFrame] = []
        for frame in frames:
            batch.append(frame)
            if len(batch) == _BATCH:
                self._add_frames(batch)
                batch = []
        if batch:
            self._add_frames(batch)

    def _add_frames(self, batch: list[TimedFrame]) -> None:
        n = len(batch)
        self.add_arrays(
            np.fromiter((f.track for f in batch), np.int64, n),
            np.fromiter((f.timestamp_ms for f in batch), np.int64, n),
            np.fromiter((len(f.payload) for f in batch), np.int64, n),
            np.frombuffer(b"".join(f.payload for f in batch), dtype=np.uint8),
        )

    def add_arrays(
        self,
        tracks: npt.NDArray[np.integer],
        timestamps_ms: npt.NDArray[np.integer],
        lengths_bytes: npt.NDArray[np.integer],
        payload: npt.NDArray[np.uint8],
    ) -> None:
        """Frames given column-wise; ``payload`` is their coded audio, concatenated in order."""
        if not len(tracks):
            return
        tracks = tracks.astype(np.int64, copy=False)
        if tracks.min() < 0 or tracks.max() >= self.n_tracks:
            raise ValueError("frame names a track outside the timeline")
        width = SAMPLE_BYTES[self.codec]
        samples = decode(self.codec, payload)
        lengths = lengths_bytes.astype(np.int64) // width
        starts = timestamps_ms.astype(np.int64) * self.sample_rate // 1000
        end = int((starts + lengths).max())
        self._grow(end)
        flat = self._audio.reshape(-1)
        if (lengths == lengths[0]).all():
            # Equal frames (the usual case): positions by broadcasting, no repeat/cumsum.
            offsets = np.arange(lengths[0], dtype=np.int64)
            position = (starts[:, None] + offsets[None, :]) * self.n_tracks + tracks[:, None]
            flat[position.reshape(-1)] = samples[: position.size]
        else:
            first = np.cumsum(lengths) - lengths
            sample_pos = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(
                starts - first, lengths
            )
            flat[sample_pos * self.n_tracks + np.repeat(tracks, lengths)] = samples[
                : sample_pos.size
            ]
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
