"""load_audio accepts mono/stereo audio and rejects everything else with UnsupportedAudio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from media.wavfile import UnsupportedAudio, load_audio, write_wav

RATE = 48000


def _signal(frames: int, channels: int) -> np.ndarray:
    t = np.arange(frames) / RATE
    cols = [0.5 * np.sin(2 * np.pi * (440 + 110 * c) * t) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
@pytest.mark.parametrize("channels", [1, 2])
def test_load_audio_mono_and_stereo(tmp_path: Path, subtype: str, channels: int) -> None:
    path = tmp_path / f"prompt_{channels}ch_{subtype}.wav"
    expected = _signal(4800, channels)
    sf.write(path, expected, RATE, subtype=subtype)

    samples, rate = load_audio(path)

    assert rate == RATE
    assert samples.dtype == np.float32
    assert samples.shape == (4800, channels)
    tolerance = 1 / 32768 if subtype == "PCM_16" else 0
    np.testing.assert_allclose(samples, expected, atol=tolerance)


def test_load_audio_accepts_str_path(tmp_path: Path) -> None:
    path = tmp_path / "mono.wav"
    sf.write(path, np.zeros(100, dtype=np.float32), RATE)
    samples, _ = load_audio(str(path))
    assert samples.shape == (100, 1)


def _assert_rejected(path: Path, match: str) -> None:
    with pytest.raises(UnsupportedAudio, match=match) as info:
        load_audio(path)
    message = str(info.value)
    assert path.name in message
    assert "\n" not in message


def test_rejects_three_channels(tmp_path: Path) -> None:
    path = tmp_path / "surround.wav"
    sf.write(path, _signal(480, 3), RATE)
    _assert_rejected(path, "at most 2 channels")
    with pytest.raises(UnsupportedAudio, match="caller and agent"):
        load_audio(path)


def test_rejects_text_file_named_wav(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n")
    _assert_rejected(path, "cannot decode")


def test_rejects_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    _assert_rejected(path, "unsupported audio file")


def test_rejects_wav_without_frames(tmp_path: Path) -> None:
    path = tmp_path / "no_frames.wav"
    sf.write(path, np.zeros((0, 1), dtype=np.float32), RATE)
    _assert_rejected(path, "no audio frames")


def test_rejects_low_sample_rate(tmp_path: Path) -> None:
    path = tmp_path / "lofi.wav"
    sf.write(path, np.zeros(100, dtype=np.float32), 4000)
    _assert_rejected(path, "below the minimum of 8000 Hz")


def test_rejects_missing_file(tmp_path: Path) -> None:
    _assert_rejected(tmp_path / "missing.wav", "no such file")


def test_unsupported_audio_is_a_value_error() -> None:
    assert issubclass(UnsupportedAudio, ValueError)


@pytest.mark.parametrize("shape", [(800,), (800, 2)])
def test_write_wav_round_trip(tmp_path: Path, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    samples = rng.integers(-32768, 32768, size=shape, dtype=np.int16)
    path = tmp_path / "out.wav"

    write_wav(path, samples, 8000)

    info = sf.info(path)
    assert (info.format, info.subtype, info.samplerate) == ("WAV", "PCM_16", 8000)
    assert info.channels == (1 if len(shape) == 1 else 2)
    back, _ = sf.read(path, dtype="int16")
    np.testing.assert_array_equal(back, samples)


def test_write_wav_rejects_float_and_multichannel(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_wav(tmp_path / "f.wav", np.zeros(10, dtype=np.float32), 8000)
    with pytest.raises(ValueError):
        write_wav(tmp_path / "c.wav", np.zeros((10, 3), dtype=np.int16), 8000)


def test_wav_header_makes_a_file_soundfile_reads_back():
    import io

    from media.wavfile import wav_header

    rng = np.random.default_rng(1)
    for channels in (1, 2):
        samples = rng.integers(-32768, 32767, size=(1234, channels), dtype=np.int16)
        blob = wav_header(len(samples), channels, 8000) + samples.tobytes()
        back, rate = sf.read(io.BytesIO(blob), dtype="int16", always_2d=True)
        assert rate == 8000 and np.array_equal(back, samples)
