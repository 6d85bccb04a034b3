"""G.711 codecs must be bit-exact with CPython's audioop (the Sun g711.c reference) everywhere."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    # audioop is deprecated in 3.11/3.12 and gone in 3.13, where the audioop-lts test extra
    # provides the same module name.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

from media import g711

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def test_ulaw_encode_matches_audioop_for_every_int16() -> None:
    expected = np.frombuffer(audioop.lin2ulaw(ALL_INT16.tobytes(), 2), dtype=np.uint8)
    actual = np.frombuffer(g711.ulaw_encode(ALL_INT16), dtype=np.uint8)
    mismatches = np.flatnonzero(actual != expected)
    assert mismatches.size == 0, f"first mismatching inputs: {ALL_INT16[mismatches[:10]]}"


def test_alaw_encode_matches_audioop_for_every_int16() -> None:
    expected = np.frombuffer(audioop.lin2alaw(ALL_INT16.tobytes(), 2), dtype=np.uint8)
    actual = np.frombuffer(g711.alaw_encode(ALL_INT16), dtype=np.uint8)
    mismatches = np.flatnonzero(actual != expected)
    assert mismatches.size == 0, f"first mismatching inputs: {ALL_INT16[mismatches[:10]]}"


def test_ulaw_decode_matches_audioop_for_every_code() -> None:
    expected = np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), dtype=np.int16)
    np.testing.assert_array_equal(g711.ulaw_decode(ALL_CODES), expected)


def test_alaw_decode_matches_audioop_for_every_code() -> None:
    expected = np.frombuffer(audioop.alaw2lin(ALL_CODES, 2), dtype=np.int16)
    np.testing.assert_array_equal(g711.alaw_decode(ALL_CODES), expected)


def test_tables_index_by_uint16_view() -> None:
    # Position i of an encode table is the code for the int16 whose bit pattern is i.
    views = ALL_INT16.view(np.uint16)
    ulaw = np.frombuffer(audioop.lin2ulaw(ALL_INT16.tobytes(), 2), dtype=np.uint8)
    alaw = np.frombuffer(audioop.lin2alaw(ALL_INT16.tobytes(), 2), dtype=np.uint8)
    np.testing.assert_array_equal(g711.ULAW_ENCODE_TABLE[views], ulaw)
    np.testing.assert_array_equal(g711.ALAW_ENCODE_TABLE[views], alaw)
    assert g711.ULAW_ENCODE_TABLE.shape == g711.ALAW_ENCODE_TABLE.shape == (65536,)
    assert g711.ULAW_ENCODE_TABLE.dtype == g711.ALAW_ENCODE_TABLE.dtype == np.uint8
    assert g711.ULAW_DECODE_TABLE.shape == g711.ALAW_DECODE_TABLE.shape == (256,)
    assert g711.ULAW_DECODE_TABLE.dtype == g711.ALAW_DECODE_TABLE.dtype == np.int16


@pytest.mark.parametrize(
    ("encode", "decode"),
    [(g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)],
    ids=["ulaw", "alaw"],
)
def test_decode_encode_round_trip_is_stable(encode, decode) -> None:
    decoded = decode(ALL_CODES)
    np.testing.assert_array_equal(decode(encode(decoded)), decoded)


def test_silence_constants_encode_zero() -> None:
    zero = np.zeros(1, dtype=np.int16)
    assert g711.ulaw_encode(zero) == bytes([g711.ULAW_SILENCE]) == b"\xff"
    assert g711.alaw_encode(zero) == bytes([g711.ALAW_SILENCE]) == b"\xd5"
    assert g711.ulaw_decode(bytes([g711.ULAW_SILENCE]))[0] == 0


def test_decode_accepts_uint8_arrays_and_keeps_shape() -> None:
    codes = np.frombuffer(ALL_CODES, dtype=np.uint8).reshape(128, 2)
    decoded = g711.ulaw_decode(codes)
    assert decoded.shape == (128, 2)
    assert decoded.dtype == np.int16
    np.testing.assert_array_equal(decoded.ravel(), g711.ulaw_decode(ALL_CODES))


def test_encode_rejects_non_int16() -> None:
    with pytest.raises(TypeError, match="int16"):
        g711.ulaw_encode(np.zeros(4, dtype=np.float32))


def test_decode_rejects_out_of_range_codes() -> None:
    with pytest.raises(ValueError, match=r"0\.\.255"):
        g711.alaw_decode(np.array([0, 256]))
