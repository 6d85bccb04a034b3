"""Linear PCM helpers: sample-format conversion, resampling, down-mixing and framing.

Prompts and uploaded recordings arrive at whatever rate and layout the author used (typically
44.1/48 kHz, sometimes stereo), while the telephone leg is 8 kHz mono in 20 ms frames. These
helpers bridge the two using numpy only.
"""

from __future__ import annotations

from functools import lru_cache
from math import ceil, gcd
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from media.g711 import ULAW_SILENCE

__all__ = ["float_to_int16", "frame", "int16_to_float", "resample", "to_mono"]

_INT16_SCALE = 32768.0

_ScalarT = TypeVar("_ScalarT", bound=np.generic)

# Resampler design. The low-pass cutoff (-6 dB) sits at 90% of the lower Nyquist frequency with
# a transition band 5% of the lower rate wide: for 8 kHz output the response is flat up to
# 3.4 kHz (the whole telephone band) and at least 80 dB down from 3.8 kHz, so nothing that folds
# back on decimation is audible.
_ROLLOFF = 0.9
_TRANSITION = 0.05
_STOPBAND_DB = 80.0
_KAISER_BETA = 0.1102 * (_STOPBAND_DB - 8.7)
# Kaiser's length estimate for that attenuation and transition width, as a half-width in
# periods of the lower sample rate (51 with the values above).
_HALF_WIDTH = ceil((_STOPBAND_DB - 7.95) / (2.285 * 2 * np.pi * _TRANSITION) / 2)


def float_to_int16(x: npt.ArrayLike) -> npt.NDArray[np.int16]:
    """Convert float samples in [-1, 1) to int16, clipping anything outside that range.

    NaN becomes 0 so a single bad sample cannot poison the cast.
    """
    # Clip before scaling so huge values and infinities never overflow; the upper clip at 32767
    # is what makes +1.0 (just outside the int16 range) saturate instead of wrapping.
    clipped = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0), -1.0, 1.0)
    return np.clip(np.rint(clipped * _INT16_SCALE), -32768, 32767).astype(np.int16)


def int16_to_float(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Convert int16 samples to float32 in [-1, 1)."""
    return (np.asarray(x, dtype=np.int16) / np.float32(_INT16_SCALE)).astype(np.float32)


def to_mono(x: npt.NDArray[_ScalarT]) -> npt.NDArray[_ScalarT]:
    """Down-mix a (frames, channels) array to 1-D by averaging the channels.

    1-D input is returned unchanged. Float input keeps its dtype; integer input is rounded back
    to its own dtype (an average of int16 values always fits in int16).
    """
    x = np.asarray(x)
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise ValueError(f"expected a 1-D or (frames, channels) array, got shape {x.shape}")
    if np.issubdtype(x.dtype, np.floating):
        mono: npt.NDArray[_ScalarT] = x.mean(axis=1, dtype=x.dtype)
        return mono
    mean: npt.NDArray[np.float64] = x.mean(axis=1, dtype=np.float64)
    return np.rint(mean).astype(x.dtype)


@lru_cache(maxsize=8)
def _polyphase_filter(up: int, down: int) -> tuple[npt.NDArray[np.float64], int]:
    """Kaiser-windowed sinc low-pass at the virtual rate ``src * up``, split into ``up`` phases.

    Returns a (up, taps_per_phase) array whose row ``p`` holds taps ``p, p + up, p + 2*up, ...``
    of the prototype filter, and the prototype's half-length in virtual-rate samples.
    """
    ratio = max(up, down)
    half = _HALF_WIDTH * ratio
    n = np.arange(-half, half + 1, dtype=np.float64)
    cutoff = _ROLLOFF * 0.5 / ratio  # cycles per virtual-rate sample
    h = 2.0 * cutoff * np.sinc(2.0 * cutoff * n) * np.kaiser(n.size, _KAISER_BETA)
    # Zero-stuffing by `up` divides the signal's energy per virtual sample by `up`; restore unity
    # passband gain by making the taps sum to `up` (each phase then sums to ~1).
    h *= up / h.sum()
    taps = ceil(h.size / up)
    flat = np.zeros(taps * up)
    flat[: h.size] = h
    bank = flat.reshape(taps, up).T.copy()
    bank.flags.writeable = False
    return bank, half


def resample(x: npt.NDArray[np.floating], src_rate: int, dst_rate: int) -> npt.NDArray[np.floating]:
    """Band-limited resampling of a 1-D float signal from ``src_rate`` to ``dst_rate`` Hz.

    Rational polyphase resampler: conceptually the input is zero-stuffed by ``up``, low-passed
    with a Kaiser-windowed sinc (zero phase, so no delay is introduced) and decimated by
    ``down``, where ``up/down = dst_rate/src_rate`` in lowest terms. Only the products that land
    on output samples are computed. The output has ``ceil(len(x) * dst_rate / src_rate)``
    samples and the input's float dtype (float32 stays float32). Equal rates return the input.
    """
    if int(src_rate) != src_rate or int(dst_rate) != dst_rate or src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive integers, got {src_rate} -> {dst_rate}")
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"resample expects a 1-D array, got shape {x.shape} (see to_mono)")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"resample expects float samples, got {x.dtype} (see int16_to_float)")
    src_rate, dst_rate = int(src_rate), int(dst_rate)
    if src_rate == dst_rate:
        return x
    g = gcd(src_rate, dst_rate)
    up, down = dst_rate // g, src_rate // g
    n_in = x.size
    n_out = -(-n_in * up // down)
    dtype = np.result_type(x.dtype, np.float32)
    y = np.zeros(n_out, dtype=dtype)
    if n_out == 0:
        return y

    bank, half = _polyphase_filter(up, down)
    bank = bank.astype(dtype, copy=False)
    taps = bank.shape[1]

    # Output m sits at virtual time k = m*down. The newest input it uses is
    # n_hi = (k + half) // up, and the taps it needs are phase p = (k + half) % up, applied
    # backwards over x[n_hi], x[n_hi - 1], ... . Outputs m0, m0 + up, m0 + 2*up, ... share a
    # phase and their n_hi step by exactly `down`, so each phase is one matrix-vector product
    # over a strided (zero-copy) window view of the input.
    pad_left = taps - 1
    last_hi = ((n_out - 1) * down + half) // up
    pad_right = max(0, last_hi - (n_in - 1))
    padded = np.concatenate(
        [np.zeros(pad_left, dtype), x.astype(dtype, copy=False), np.zeros(pad_right, dtype)]
    )
    windows = sliding_window_view(padded, taps)  # windows[i] = padded[i : i + taps]
    reversed_bank = bank[:, ::-1]
    for m0 in range(min(up, n_out)):
        k = m0 * down + half
        phase, n_hi = k % up, k // up
        # Window starting at n_hi - (taps - 1) in x, i.e. at n_hi in the left-padded array.
        rows = windows[n_hi : n_hi + (n_out - 1 - m0) // up * down + 1 : down]
        y[m0::up] = rows @ reversed_bank[phase]
    return y


def frame(samples_bytes: bytes, frame_bytes: int = 160, pad: int = ULAW_SILENCE) -> list[bytes]:
    """Split an encoded byte stream into fixed-size frames (160 bytes = 20 ms of 8 kHz G.711).

    The last frame is padded up to ``frame_bytes`` with the byte ``pad``; pass the codec's
    silence code (``ULAW_SILENCE`` 0xFF, the default, or ``ALAW_SILENCE`` 0xD5) so the padding
    is inaudible. Empty input gives no frames.
    """
    if frame_bytes <= 0:
        raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
    if not 0 <= pad <= 0xFF:
        raise ValueError(f"pad must be a byte value 0..255, got {pad}")
    data = bytes(samples_bytes)
    frames = [data[i : i + frame_bytes] for i in range(0, len(data), frame_bytes)]
    if frames and len(frames[-1]) < frame_bytes:
        frames[-1] += bytes([pad]) * (frame_bytes - len(frames[-1]))
    return frames
