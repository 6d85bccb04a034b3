"""PCM helpers: resampler fidelity and anti-aliasing, sample conversion, down-mixing, framing."""

from __future__ import annotations

import numpy as np
import pytest

from media.g711 import ALAW_SILENCE, ULAW_SILENCE
from media.pcm import float_to_int16, frame, int16_to_float, resample, to_mono


def _tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _steady(y: np.ndarray) -> np.ndarray:
    # Skip the filter's start-up and tail, where the zero padding beyond the signal shows.
    edge = len(y) // 10
    return y[edge:-edge]


def _peak_frequency(y: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / rate)[np.argmax(spectrum)])


def _rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


@pytest.mark.parametrize("src_rate", [48000, 44100, 16000])
def test_resample_to_8k_keeps_frequency_and_amplitude(src_rate: int) -> None:
    y = _steady(resample(_tone(1000, src_rate), src_rate, 8000))
    assert abs(_peak_frequency(y, 8000) - 1000) <= 8000 / len(y)
    amplitude = _rms(y) * np.sqrt(2)
    assert amplitude == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize(("src_rate", "dst_rate"), [(8000, 16000), (44100, 48000), (8000, 44100)])
def test_resample_up_keeps_frequency_and_amplitude(src_rate: int, dst_rate: int) -> None:
    y = _steady(resample(_tone(1000, src_rate), src_rate, dst_rate))
    assert abs(_peak_frequency(y, dst_rate) - 1000) <= dst_rate / len(y)
    assert _rms(y) * np.sqrt(2) == pytest.approx(0.5, rel=0.05)


def test_resample_suppresses_alias_of_tone_above_new_nyquist() -> None:
    # 6 kHz would fold to 2 kHz at 8 kHz; it must come out at least 40 dB down.
    x = _tone(6000, 48000)
    y = _steady(resample(x, 48000, 8000))
    attenuation_db = 20 * np.log10(_rms(y) / _rms(x))
    assert attenuation_db <= -40


@pytest.mark.parametrize(
    ("src_rate", "dst_rate"),
    [(48000, 8000), (44100, 8000), (16000, 8000), (8000, 16000), (44100, 48000), (22050, 8000)],
)
@pytest.mark.parametrize("n", [1, 7, 1000, 44101])
def test_resample_length(src_rate: int, dst_rate: int, n: int) -> None:
    y = resample(np.zeros(n), src_rate, dst_rate)
    assert abs(len(y) - round(n * dst_rate / src_rate)) <= 1


def test_resample_empty_input() -> None:
    assert resample(np.zeros(0, dtype=np.float32), 48000, 8000).shape == (0,)


def test_resample_identity_for_equal_rates() -> None:
    x = _tone(440, 8000)
    np.testing.assert_array_equal(resample(x, 8000, 8000), x)


def test_resample_keeps_float_dtype_and_dc_level() -> None:
    y32 = resample(np.full(4800, 0.25, dtype=np.float32), 48000, 8000)
    y64 = resample(np.full(4410, 0.25, dtype=np.float64), 44100, 8000)
    assert y32.dtype == np.float32
    assert y64.dtype == np.float64
    np.testing.assert_allclose(_steady(y32), 0.25, rtol=1e-3)
    np.testing.assert_allclose(_steady(y64), 0.25, rtol=1e-3)


def test_resample_rejects_bad_input() -> None:
    with pytest.raises(TypeError):
        resample(np.zeros(10, dtype=np.int16), 16000, 8000)
    with pytest.raises(ValueError):
        resample(np.zeros((10, 2)), 16000, 8000)
    with pytest.raises(ValueError):
        resample(np.zeros(10), 0, 8000)


def test_float_to_int16_scales_rounds_and_clips() -> None:
    x = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, np.inf, -np.inf, np.nan])
    expected = [-32768, -32768, -16384, 0, 16384, 32767, 32767, 32767, -32768, 0]
    out = float_to_int16(x)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, expected)
    assert float_to_int16(np.array([1.4 / 32768]))[0] == 1


def test_int16_to_float_round_trip() -> None:
    x = np.array([-32768, -1, 0, 1, 32767], dtype=np.int16)
    f = int16_to_float(x)
    assert f.dtype == np.float32
    assert f[0] == -1.0
    assert f.max() < 1.0
    np.testing.assert_array_equal(float_to_int16(f), x)


def test_to_mono_averages_channels() -> None:
    stereo = np.array([[1.0, 0.0], [0.5, -0.5]], dtype=np.float32)
    mono = to_mono(stereo)
    assert mono.dtype == np.float32
    np.testing.assert_array_equal(mono, [0.5, 0.0])
    np.testing.assert_array_equal(to_mono(np.array([[100, 300]], dtype=np.int16)), [200])
    one_d = np.arange(3.0)
    assert to_mono(one_d) is one_d


def test_frame_splits_and_pads_last_frame() -> None:
    data = bytes(range(200)) * 2  # 400 bytes -> 160 + 160 + 80 padded
    frames = frame(data, pad=ULAW_SILENCE)
    assert [len(f) for f in frames] == [160, 160, 160]
    assert b"".join(frames)[:400] == data
    assert frames[-1][80:] == bytes([ULAW_SILENCE]) * 80


def test_frame_exact_multiple_and_custom_pad() -> None:
    assert frame(bytes(320)) == [bytes(160), bytes(160)]
    assert frame(b"abcde", 2, pad=ALAW_SILENCE) == [b"ab", b"cd", b"e\xd5"]
    assert frame(b"") == []


def test_frame_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        frame(b"abc", 0)
    with pytest.raises(ValueError):
        frame(b"abc", 2, pad=256)
