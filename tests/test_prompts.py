"""Caller prompts: the synthesised prompts of every demo line are playable, audible and say
what the line does; the prompt cache is content-addressed, safe under concurrent builds and
clear when espeak-ng is missing; load_prompt's conversion and rejections.

Needs espeak-ng (``make test`` installs it): the prompts are synthesised into the test run's
shared cache (tests/conftest.py), once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ivr.capabilities import PLATFORMS
from ivr.config import load_config
from ivr.prompt_library import PromptLibrary
from media.g711 import ulaw_decode
from media.prompts import (
    LANGUAGES,
    Prompt,
    PromptError,
    load_prompt,
    prompt_frames,
)
from media.tts import CACHE_FORMAT, PromptCache, SpeechError, ulaw_wav

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(prompt_cache: Path) -> PromptLibrary:
    return PromptLibrary.load(load_config(None, environ={}), prompt_cache)


def _distinct(library: PromptLibrary) -> dict[str, Prompt]:
    return {p.sha256: p for prompts in library.calls.values() for p in prompts.values()}


def _rms_dbfs(prompt: Prompt) -> float:
    pcm = ulaw_decode(prompt.ulaw).astype(np.float64) / 32768.0
    return float(20 * np.log10(np.sqrt(np.mean(pcm**2))))


def _sine(seconds: float, rate: int, amplitude: float = 0.5, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _load(path: Path, text: str = "Hello.") -> Prompt:
    return load_prompt(path, prompt_id="consent_request", language="en", text=text)


# --- the synthesised prompts of the demo lines -------------------------------------------------


def test_every_line_has_its_prompts_on_each_of_its_platforms(demo) -> None:
    config = load_config(None, environ={})
    assert set(demo.calls) == {(n, p) for n, line in config.lines.items() for p in line.platforms}
    for line in config.lines.values():
        for platform in line.platforms:
            prompts = demo.for_call(line, platform)
            assert {"recording_started", "not_recording", "recording_stopped"} <= set(prompts)
            assert all(p.id == pid and p.language == line.language for pid, p in prompts.items())


def test_every_synthesised_prompt_is_playable_and_audible(demo) -> None:
    for prompt in _distinct(demo).values():
        assert 500 <= prompt.duration_ms <= 60_000, (prompt.text, prompt.duration_ms)
        assert len(prompt.ulaw) % 160 == 0
        assert prompt.duration_ms == len(prompt.ulaw) // 8
        assert prompt.sha256 == hashlib.sha256(prompt.ulaw).hexdigest()
        # Speech normalised to -3 dBFS peak sits far above this; silence would be at -inf.
        assert _rms_dbfs(prompt) > -35.0, prompt.text
        frames = prompt_frames(prompt)
        assert all(len(f) == 160 for f in frames)
        assert b"".join(frames) == prompt.ulaw
        # The silence espeak-ng leaves at either end is cut to at most 100 ms (+ frame padding).
        pcm = np.abs(ulaw_decode(prompt.ulaw).astype(np.int32))
        loud = np.flatnonzero(pcm > 32768 * 10 ** (-40 / 20) * 0.7)
        assert loud[0] <= 0.1 * 8000 + 80 and len(pcm) - loud[-1] <= 0.1 * 8000 + 240


def test_the_cached_file_is_the_audio_played(demo, prompt_cache: Path) -> None:
    """The SHA-256 in the consent evidence can be checked against the cache with sha256sum."""
    for prompt in _distinct(demo).values():
        wav = Path(prompt.source)
        assert wav.parent == prompt_cache / f"v{CACHE_FORMAT}" / "audio"
        assert wav.name == f"{prompt.sha256}.wav"
        data = wav.read_bytes()
        assert data == ulaw_wav(prompt.ulaw)
        info = sf.info(wav)
        assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "ULAW")
        # Any reader of the file (a tenant's tools, load_prompt) gets the same audio back.
        again = load_prompt(wav, prompt_id="x", language=prompt.language, text=prompt.text)
        assert again.sha256 == prompt.sha256


def test_the_index_tells_the_words_of_each_audio(demo, prompt_cache: Path) -> None:
    cache = PromptCache(prompt_cache)
    for prompt in _distinct(demo).values():
        spoken = cache.spoken(prompt.sha256)
        assert spoken is not None
        assert (spoken.text, spoken.language) == (prompt.text, prompt.language)
        assert spoken.engine.startswith("espeak-ng ") and spoken.voice in ("en-gb", "sv")
    assert cache.spoken("00" * 32) is None and cache.spoken("not a hash") is None


def test_swedish_lines_speak_swedish(demo) -> None:
    config = load_config(None, environ={})
    texts = {
        lang: " ".join(
            p.text
            for line in config.lines.values()
            if line.language == lang
            for p in demo.for_call(line, line.platforms[0]).values()
        )
        for lang in LANGUAGES
    }
    assert re.search("[åäöÅÄÖ]", texts["sv"]) and not re.search("[åäöÅÄÖ]", texts["en"])


# --- the cache ----------------------------------------------------------------------------------

TEXT = "This call is recorded, for this purpose: testing the cache."


def test_same_words_same_audio_and_a_changed_word_new_audio(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path / "cache")
    first, new = cache.prompt("en", TEXT, prompt_id="notice_only")
    assert new
    again, new = cache.prompt("en", TEXT, prompt_id="notice_only")
    assert not new and again.sha256 == first.sha256 and again.source == first.source
    # Another process (here: another cache object) finds it by its words, and the id is the
    # caller's: two prompts may say the same words.
    other, new = PromptCache(tmp_path / "cache").prompt("en", TEXT, prompt_id="x")
    assert not new and (other.sha256, other.id) == (first.sha256, "x")
    changed, new = cache.prompt("en", TEXT.replace("testing", "checking"), prompt_id="notice_only")
    assert new and changed.sha256 != first.sha256
    swedish, new = cache.prompt("sv", TEXT, prompt_id="notice_only")  # another voice
    assert new and swedish.sha256 != first.sha256
    audio = sorted(p.name for p in (tmp_path / "cache" / "v1" / "audio").glob("*.wav"))
    assert audio == sorted(f"{p.sha256}.wav" for p in (first, changed, swedish))


def test_the_key_covers_format_engine_voice_speed_and_words(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path)
    key = cache.synthesis_key("en", TEXT, "espeak-ng 1.51")
    assert key == cache.synthesis_key("en", TEXT, "espeak-ng 1.51")
    assert key != cache.synthesis_key("en", TEXT, "espeak-ng 1.52")
    assert key != cache.synthesis_key("sv", TEXT, "espeak-ng 1.51")
    assert key != cache.synthesis_key("en", TEXT + " ", "espeak-ng 1.51")
    with pytest.raises(SpeechError, match="no voice for language 'fi'"):
        cache.synthesis_key("fi", TEXT, "espeak-ng 1.51")


def test_another_espeak_version_synthesises_anew(tmp_path: Path) -> None:
    PromptCache(tmp_path).prompt("en", TEXT, prompt_id="notice_only")
    newer = PromptCache(tmp_path)
    newer._engine, newer._engine_known = "espeak-ng 9.99", True
    assert newer.cached("en", TEXT) is None
    _, new = newer.prompt("en", TEXT, prompt_id="notice_only")
    assert new  # (the same audio here, since it is in truth the same espeak-ng)


def test_a_damaged_file_is_made_again(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path)
    first, _ = cache.prompt("en", TEXT, prompt_id="notice_only")
    wav = Path(first.source)
    wav.write_bytes(wav.read_bytes()[:-500])  # torn, as by a crash before the rename
    again, new = cache.prompt("en", TEXT, prompt_id="notice_only")
    assert new and again.sha256 == first.sha256 and wav.read_bytes() == ulaw_wav(first.ulaw)
    (tmp_path / "v1" / "audio" / f"{first.sha256}.json").write_text("{not json")
    assert cache.spoken(first.sha256) is None
    _, new = cache.prompt("en", TEXT, prompt_id="notice_only")
    assert new and cache.spoken(first.sha256) is not None


def _no_espeak(tmp_path: Path) -> str:
    return str(tmp_path / "no-such-dir" / "espeak-ng")


def test_without_espeak_ng_cached_prompts_are_found_and_missing_ones_say_how_to_install(
    tmp_path: Path,
) -> None:
    made, _ = PromptCache(tmp_path).prompt("en", TEXT, prompt_id="notice_only")
    bare = PromptCache(tmp_path, espeak=_no_espeak(tmp_path))
    assert bare.engine() is None
    found, new = bare.prompt("en", TEXT, prompt_id="notice_only")
    assert not new and found.sha256 == made.sha256
    with pytest.raises(SpeechError) as info:
        bare.prompt("en", "Words nobody has synthesised yet.", prompt_id="notice_only")
    message = str(info.value)
    assert "is not installed" in message and "apt-get install -y espeak-ng" in message
    assert "ivr prompts build" in message and "\n" not in message


def test_threads_building_the_same_prompts_at_once(tmp_path: Path) -> None:
    texts = [f"{TEXT} Number {n}." for n in range(4)]
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            cache = PromptCache(tmp_path)
            results.append([cache.prompt("en", t, prompt_id="x")[0].sha256 for t in texts])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 6 and all(r == results[0] for r in results)
    _assert_cache_consistent(tmp_path)


def test_processes_building_the_same_prompts_at_once(tmp_path: Path) -> None:
    """Two ``ivr prompts build`` at once on one empty cache (as two test runs may): both
    succeed, agree, and leave a consistent cache without temporary files."""
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "ivr", "prompts", "build", "--cache", str(cache), "--json"]
    env = {k: v for k, v in os.environ.items() if k != "IVR_CONFIG"}
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err.decode() for _, err in outs]
    reports = [json.loads(out) for out, _ in outs]
    shas = [
        sorted((r["line"], r["platform"], r["prompt_id"], r["sha256"]) for r in x["prompts"])
        for x in reports
    ]
    assert shas[0] == shas[1] == shas[2]
    _assert_cache_consistent(cache)


def _assert_cache_consistent(cache_dir: Path) -> None:
    root = cache_dir / "v1"
    leftovers = [p for p in root.rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    cache = PromptCache(cache_dir)
    wavs = list((root / "audio").glob("*.wav"))
    assert wavs
    for wav in wavs:
        sha = wav.stem
        spoken = cache.spoken(sha)
        assert spoken is not None
        data = wav.read_bytes()
        assert hashlib.sha256(data[58:]).hexdigest() == sha and data == ulaw_wav(data[58:])
        assert cache.cached(spoken.language, spoken.text) is not None
    for ref in [*(root / "keys").glob("*.json"), *(root / "texts").glob("*.json")]:
        assert (root / "audio" / f"{json.loads(ref.read_text())['sha256']}.wav").is_file()


def test_the_demo_wording_is_what_platforms_honour() -> None:
    """The same line says a different withdraw sentence per platform (keys vs agent)."""
    config = load_config(None, environ={})
    line = config.lines["+15550100001"]
    assert line.withdraw_channel(PLATFORMS["twilio"]).value == "agent"
    assert line.withdraw_channel(PLATFORMS["asterisk"]).value == "keys"


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
