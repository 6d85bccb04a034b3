"""G.711 μ-law and A-law codecs for 8 kHz telephony audio.

Telephony carriers (Twilio media streams, Asterisk) exchange 8-bit G.711 samples, while recordings
and prompts are handled as 16-bit linear PCM. This module converts between the two with lookup
tables that are bit-exact with the ITU-T G.711 reference tables as implemented by the Sun
``g711.c`` code that CPython's ``audioop`` (``lin2ulaw``/``ulaw2lin``/``lin2alaw``/``alaw2lin``
with width 2) uses.

All four tables are derived once at import time from the companding algorithm, vectorised over
every possible input, so encoding and decoding are a single numpy fancy-indexing operation.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALAW_DECODE_TABLE",
    "ALAW_ENCODE_TABLE",
    "ALAW_SILENCE",
    "ULAW_DECODE_TABLE",
    "ULAW_ENCODE_TABLE",
    "ULAW_SILENCE",
    "alaw_decode",
    "alaw_encode",
    "ulaw_decode",
    "ulaw_encode",
]

# The code word each law produces for a linear 0, i.e. what to fill gaps and padding with.
ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5

# μ-law works on a 14-bit magnitude: the 16-bit bias 0x84 (132) and clip level 32635 become
# 33 and 8159 once the two low bits are dropped, exactly as the reference coder does.
_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635
# Upper (inclusive) magnitude of each of the 8 segments, on the biased 14-bit magnitude.
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
# A-law works on a 13-bit magnitude (three low bits dropped) with these segment ends.
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)

_QUANT_MASK = 0x0F
_SEG_SHIFT = 4
_SEG_MASK = 0x70
_SIGN_BIT = 0x80

Codes = bytes | bytearray | memoryview | npt.NDArray[np.integer]

_ScalarT = TypeVar("_ScalarT", bound=np.generic)


def _all_int16() -> npt.NDArray[np.int32]:
    """Every int16 value, ordered so that position ``i`` holds the int16 whose uint16 view is i.

    That ordering lets encoders index the table with ``samples.view(np.uint16)`` directly.
    """
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _readonly(a: npt.NDArray[_ScalarT]) -> npt.NDArray[_ScalarT]:
    # The tables are module-level singletons shared by every caller; a stray in-place write would
    # silently corrupt every later call, so make that an error instead.
    a.flags.writeable = False
    return a


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    # An arithmetic shift floors, so e.g. -1 becomes -1 (not 0) on the 14-bit scale; the
    # reference relies on that, which is why small negative inputs don't map to 0xFF.
    pcm = _all_int16() >> 2
    negative = pcm < 0
    magnitude = np.minimum(np.where(negative, -pcm, pcm), _ULAW_CLIP >> 2) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, magnitude, side="left")
    mantissa = (magnitude >> (np.minimum(seg, 7) + 1)) & _QUANT_MASK
    code = (seg << _SEG_SHIFT) | mantissa
    # The clipped, biased maximum (8192) lies just past the last segment; the reference returns
    # the largest code word there rather than wrapping into segment 0.
    code = np.where(seg >= 8, 0x7F, code)
    # μ-law transmits every bit inverted; positive samples also carry the sign bit.
    mask = np.where(negative, 0x7F, 0xFF)
    return _readonly((code ^ mask).astype(np.uint8))


def _build_ulaw_decode() -> npt.NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & _QUANT_MASK) << 3) + _ULAW_BIAS
    t <<= (u & _SEG_MASK) >> _SEG_SHIFT
    linear = np.where(u & _SIGN_BIT, _ULAW_BIAS - t, t - _ULAW_BIAS)
    return _readonly(linear.astype(np.int16))


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    pcm = _all_int16() >> 3
    negative = pcm < 0
    # One's-complement magnitude for negatives keeps the 13-bit range symmetric (-4096 -> 4095).
    magnitude = np.where(negative, -pcm - 1, pcm)
    seg = np.searchsorted(_ALAW_SEG_END, magnitude, side="left")
    # The two lowest segments share the same step size, hence the same shift.
    shift = np.where(seg < 2, 1, seg)
    code = (seg << _SEG_SHIFT) | ((magnitude >> shift) & _QUANT_MASK)
    # Even bits are inverted (0x55) for line density; positives also get the sign bit (0x80).
    mask = np.where(negative, 0x55, 0xD5)
    return _readonly((code ^ mask).astype(np.uint8))


def _build_alaw_decode() -> npt.NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & _SEG_MASK) >> _SEG_SHIFT
    t = (a & _QUANT_MASK) << 4
    # Reconstruct at the middle of each quantisation step; segment 0 has no implicit leading 1.
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    linear = np.where(a & _SIGN_BIT, t, -t)
    return _readonly(linear.astype(np.int16))


ULAW_ENCODE_TABLE: npt.NDArray[np.uint8] = _build_ulaw_encode()
ULAW_DECODE_TABLE: npt.NDArray[np.int16] = _build_ulaw_decode()
ALAW_ENCODE_TABLE: npt.NDArray[np.uint8] = _build_alaw_encode()
ALAW_DECODE_TABLE: npt.NDArray[np.int16] = _build_alaw_decode()


def _as_codes(data: Codes) -> npt.NDArray[np.uint8]:
    if isinstance(data, bytes | bytearray | memoryview):
        return np.frombuffer(data, dtype=np.uint8)
    codes = np.asarray(data)
    if codes.dtype == np.uint8:
        return codes.astype(np.uint8, copy=False)  # the array itself: no copy for uint8
    if not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"G.711 code words must be bytes or an integer array, got {codes.dtype}")
    # Casting would silently wrap out-of-range values into valid-looking code words.
    if codes.size and (codes.min() < 0 or codes.max() > 0xFF):
        raise ValueError("G.711 code words must be in the range 0..255")
    return codes.astype(np.uint8)


def _as_uint16_view(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.uint16]:
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        # Refuse rather than cast: float audio in [-1, 1) would quietly encode as near-silence.
        raise TypeError(
            f"G.711 encoding needs int16 samples, got {samples.dtype} "
            "(use media.pcm.float_to_int16 for float audio)"
        )
    return samples.view(np.uint16)


def ulaw_decode(data: Codes) -> npt.NDArray[np.int16]:
    """Decode μ-law code words (bytes or a uint8 array) to int16 linear PCM of the same shape."""
    # take() is about twice as fast as fancy indexing for a 256-entry table.
    return ULAW_DECODE_TABLE.take(_as_codes(data))


def ulaw_encode(samples: npt.NDArray[np.int16]) -> bytes:
    """Encode int16 linear PCM to μ-law bytes; multi-dimensional input is flattened in C order."""
    return ULAW_ENCODE_TABLE[_as_uint16_view(samples)].tobytes()


def alaw_decode(data: Codes) -> npt.NDArray[np.int16]:
    """Decode A-law code words (bytes or a uint8 array) to int16 linear PCM of the same shape."""
    return ALAW_DECODE_TABLE.take(_as_codes(data))


def alaw_encode(samples: npt.NDArray[np.int16]) -> bytes:
    """Encode int16 linear PCM to A-law bytes; multi-dimensional input is flattened in C order."""
    return ALAW_ENCODE_TABLE[_as_uint16_view(samples)].tobytes()
