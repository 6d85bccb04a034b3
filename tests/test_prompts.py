"""Caller prompts: the committed en/sv prompts load and are audible; load_prompt's conversion and
rejections; load_manifest detects WAVs changed without regenerating the manifest.

Needs no espeak-ng: the generated WAVs and manifest are committed under sounds/.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from media.g711 import ulaw_decode
from media.prompts import (
    BUILTIN_SOUNDS,
    LANGUAGES,
    PROMPT_IDS,
    Prompt,
    PromptError,
    load_manifest,
    load_prompt,
    prompt_frames,
)

ALL_PAIRS = [(lang, pid) for lang in LANGUAGES for pid in PROMPT_IDS]


@pytest.fixture(scope="module")
def builtin() -> dict[tuple[str, str], Prompt]:
    return load_manifest(BUILTIN_SOUNDS)


def _rms_dbfs(prompt: Prompt) -> float:
    pcm = ulaw_decode(prompt.ulaw).astype(np.float64) / 32768.0
    return 20 * np.log10(np.sqrt(np.mean(pcm**2)))


def _sine(seconds: float, rate: int, amplitude: float = 0.5, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _load(path: Path, text: str = "Hello.") -> Prompt:
    return load_prompt(path, prompt_id="consent_request", language="en", text=text)


# --- the committed prompts --------------------------------------------------------------------


def test_builtin_manifest_has_every_prompt_for_every_language(builtin) -> None:
    assert LANGUAGES == ("en", "sv")
    assert len(PROMPT_IDS) == 9
    assert set(builtin) == set(ALL_PAIRS)
    for (lang, pid), prompt in builtin.items():
        assert (prompt.language, prompt.id) == (lang, pid)
        assert Path(prompt.source) == BUILTIN_SOUNDS / "prompts" / lang / f"{pid}.wav"


def test_builtin_manifest_format() -> None:
    manifest = json.loads((BUILTIN_SOUNDS / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["version"] == 1
    assert manifest["generator"].startswith("espeak-ng ")
    for lang, pid in ALL_PAIRS:
        entry = manifest["prompts"][lang][pid]
        assert entry["file"] == f"prompts/{lang}/{pid}.wav"
        data = (BUILTIN_SOUNDS / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        # Committed in the telephone format already: 8 kHz mono 16-bit PCM.
        info = sf.info(BUILTIN_SOUNDS / entry["file"])
        assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")


@pytest.mark.parametrize(("lang", "pid"), ALL_PAIRS)
def test_builtin_prompt_is_playable_and_audible(builtin, lang: str, pid: str) -> None:
    prompt = builtin[(lang, pid)]
    assert 500 <= prompt.duration_ms <= 20_000
    assert len(prompt.ulaw) % 160 == 0
    assert prompt.duration_ms == len(prompt.ulaw) // 8
    assert prompt.sha256 == hashlib.sha256(prompt.ulaw).hexdigest()
    # Speech normalised to -3 dBFS peak sits far above this; silence would be at -inf.
    assert _rms_dbfs(prompt) > -35.0
    frames = prompt_frames(prompt)
    assert all(len(f) == 160 for f in frames)
    assert b"".join(frames) == prompt.ulaw


def test_builtin_texts(builtin) -> None:
    for prompt in builtin.values():
        assert prompt.text.strip() == prompt.text
        assert prompt.text
    swedish = " ".join(builtin[("sv", pid)].text for pid in PROMPT_IDS)
    assert re.search("[åäöÅÄÖ]", swedish)
    # The two languages are different texts, not a copy of the English one.
    for pid in PROMPT_IDS:
        assert builtin[("en", pid)].text != builtin[("sv", pid)].text


@pytest.mark.parametrize("lang", LANGUAGES)
def test_consent_and_objection_texts_name_the_keys(builtin, lang: str) -> None:
    star = {"en": "star", "sv": "stjärna"}[lang]
    consent = builtin[(lang, "consent_request")].text
    # The default keys are spoken as digits: 1 = allow recording, 9 = continue without.
    assert re.search(r"\b1\b", consent)
    assert re.search(r"\b9\b", consent)
    assert star in consent
    objection = builtin[(lang, "objection_notice")].text
    assert re.search(r"\b9\b", objection)
    assert star in objection


# --- load_prompt ------------------------------------------------------------------------------


def test_load_prompt_converts_44k1_stereo_to_8k_ulaw(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    seconds = 1.234
    left = _sine(seconds, 44100, amplitude=0.6)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    sf.write(path, stereo, 44100, subtype="PCM_16")

    prompt = load_prompt(path, prompt_id="invalid_key", language="sv", text="Ogiltigt val.")

    assert (prompt.id, prompt.language, prompt.text) == ("invalid_key", "sv", "Ogiltigt val.")
    assert prompt.source == str(path)
    assert abs(prompt.duration_ms - seconds * 1000) <= 20
    assert len(prompt.ulaw) % 160 == 0
    assert prompt.duration_ms == len(prompt.ulaw) // 8
    assert prompt.sha256 == hashlib.sha256(prompt.ulaw).hexdigest()
    # 1.234 s is 9872 samples at 8 kHz: the last frame is padded with μ-law silence.
    audio_bytes = round(seconds * 8000)
    assert prompt.ulaw[audio_bytes:] == b"\xff" * (len(prompt.ulaw) - audio_bytes)
    # Mixed to mono by averaging: a 0.6 sine on one channel only plays at about 0.3.
    decoded = ulaw_decode(prompt.ulaw[:audio_bytes]).astype(np.float64) / 32768.0
    assert 0.27 < np.max(np.abs(decoded[400:-400])) < 0.33
    # And it is still a 440 Hz tone.
    spectrum = np.abs(np.fft.rfft(decoded))
    assert abs(np.argmax(spectrum) * 8000 / decoded.size - 440) < 5


def test_load_prompt_accepts_8k_mono_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "mono8k.wav"
    sf.write(path, _sine(0.5, 8000), 8000, subtype="PCM_16")
    prompt = _load(path)
    assert prompt.duration_ms == 500
    assert len(prompt_frames(prompt)) == 25


def _rejected(path: Path, text: str = "Hello.") -> str:
    with pytest.raises(PromptError) as info:
        _load(path, text)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return message


def test_rejects_silent_wav(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(8000, dtype=np.float32), 8000, subtype="PCM_16")
    assert "near-silent" in _rejected(path)


def test_rejects_near_silent_wav_but_accepts_quiet_speech_level(tmp_path: Path) -> None:
    quiet = tmp_path / "minus50dB.wav"
    sf.write(quiet, _sine(1.0, 16000, amplitude=10 ** (-50 / 20)), 16000, subtype="FLOAT")
    assert "near-silent" in _rejected(quiet)
    audible = tmp_path / "minus30dB.wav"
    sf.write(audible, _sine(1.0, 16000, amplitude=10 ** (-30 / 20)), 16000, subtype="FLOAT")
    assert _load(audible).duration_ms == 1000


def test_rejects_out_of_phase_stereo_that_mixes_to_silence(tmp_path: Path) -> None:
    path = tmp_path / "cancel.wav"
    s = _sine(1.0, 8000)
    sf.write(path, np.stack([s, -s], axis=1), 8000, subtype="FLOAT")
    assert "near-silent" in _rejected(path)


def test_rejects_too_short_wav(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    sf.write(path, _sine(0.1, 8000), 8000, subtype="PCM_16")
    assert "0.2 s" in _rejected(path)


def test_rejects_too_long_wav(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, _sine(121.0, 8000), 8000, subtype="PCM_16")
    assert "120 s" in _rejected(path)


def test_rejects_three_channel_wav(tmp_path: Path) -> None:
    path = tmp_path / "three.wav"
    sf.write(path, np.stack([_sine(1.0, 8000)] * 3, axis=1), 8000, subtype="PCM_16")
    assert "3 channels" in _rejected(path)


def test_rejects_text_file(tmp_path: Path) -> None:
    path = tmp_path / "prompt.wav"
    path.write_text("This is not audio, it is the script of the prompt.\n", encoding="utf-8")
    _rejected(path)


def test_rejects_missing_file(tmp_path: Path) -> None:
    _rejected(tmp_path / "nope.wav")


@pytest.mark.parametrize("text", ["", "   \n"])
def test_rejects_empty_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "ok.wav"
    sf.write(path, _sine(1.0, 8000), 8000, subtype="PCM_16")
    assert "text is empty" in _rejected(path, text)


# --- load_manifest ----------------------------------------------------------------------------


@pytest.fixture
def sounds_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "sounds"
    shutil.copytree(BUILTIN_SOUNDS, dst, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return dst


def test_copied_manifest_loads(sounds_copy: Path, builtin) -> None:
    copied = load_manifest(sounds_copy)
    assert {k: p.sha256 for k, p in copied.items()} == {k: p.sha256 for k, p in builtin.items()}


def test_rejects_wav_modified_after_generation(sounds_copy: Path) -> None:
    wav = sounds_copy / "prompts" / "sv" / "invalid_key.wav"
    samples, rate = sf.read(wav, dtype="int16")
    # Still a perfectly valid, audible prompt, just not the one the manifest describes.
    sf.write(wav, (samples // 2).astype(np.int16), rate, subtype="PCM_16")
    with pytest.raises(PromptError) as info:
        load_manifest(sounds_copy)
    message = str(info.value)
    assert str(wav) in message
    assert "sha256" in message
    assert "\n" not in message


def _edit_manifest(sounds_dir: Path, edit) -> None:
    path = sounds_dir / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")


def test_rejects_missing_wav(sounds_copy: Path) -> None:
    wav = sounds_copy / "prompts" / "en" / "unknown_number.wav"
    wav.unlink()
    with pytest.raises(PromptError, match="does not exist") as info:
        load_manifest(sounds_copy)
    assert str(wav) in str(info.value)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m.update(version=2), "version 2"),
        (lambda m: m.pop("version"), "version None"),
        (lambda m: m["prompts"]["sv"].pop("recording_limit"), "missing prompts"),
        (lambda m: m["prompts"]["en"].update(typo=m["prompts"]["en"]["invalid_key"]), "unknown"),
        (lambda m: m["prompts"]["en"]["invalid_key"].update(text=" "), "text is empty"),
        (lambda m: m["prompts"]["en"]["invalid_key"].update(file="../../x.wav"), "relative"),
        (lambda m: m["prompts"]["en"]["invalid_key"].update(sha256="00" * 32), "sha256"),
        (lambda m: m["prompts"]["en"]["invalid_key"].pop("sha256"), "sha256"),
    ],
)
def test_rejects_bad_manifest(sounds_copy: Path, edit, expected: str) -> None:
    _edit_manifest(sounds_copy, edit)
    with pytest.raises(PromptError, match=re.escape(expected)) as info:
        load_manifest(sounds_copy)
    assert str(sounds_copy) in str(info.value)


def test_rejects_missing_or_invalid_manifest(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="does not exist"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(PromptError, match="not valid JSON"):
        load_manifest(tmp_path)
