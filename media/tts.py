"""Synthesised prompts: espeak-ng speech in a content-addressed cache of the audio as played.

Theory of operation. A prompt's words are given (``ivr.wording`` composes them from a line);
this module turns words in a language into the exact 8 kHz μ-law audio a caller hears, and
keeps that audio so that it is made once and is the same on every call:

- espeak-ng speaks the text (voice per language, fixed speed); the result is mixed to mono,
  resampled to 8 kHz, cut to at most 100 ms of silence at either end, normalised to a -3 dBFS
  peak, and passed through ``media.prompts.prompt_from_audio``'s checks (audible, 0.2-120 s).
- The cache is addressed twice. A *synthesis key*, SHA-256 over the cache format, the espeak-ng
  version, the voice, the speed and the text, names what was asked for; the *audio SHA-256*
  (``Prompt.sha256``, of the μ-law bytes played) names what came out. The audio file is named
  by the audio SHA-256 and holds exactly those bytes after a fixed WAV header, so the hash in a
  call's consent evidence can be checked against the file with ``sha256sum`` on its data.
- Beside each audio file, ``<sha256>.json`` says what it is (text, language, voice, engine):
  the index from audio to words that simulators and tests use to know what a caller heard.
- Every file is written to a temporary name and renamed into place, and no file is ever
  rewritten with other content (its name is its content's hash, or the latest answer for a
  key, which any writer gives alike), so processes building the same prompts at once need no
  lock. What is read is checked: audio whose bytes do not hash to its name, or an unreadable
  index entry, counts as absent and is made again.
- Without espeak-ng, prompts already in the cache are still found (by their text, from
  whichever espeak-ng version made them); only a prompt the cache lacks fails, with
  ``SpeechError`` saying how to install espeak-ng.

Layout under the cache directory::

    v1/audio/<sha256>.wav     μ-law, 8 kHz, mono: the header, then the bytes played
    v1/audio/<sha256>.json    the index entry: what those bytes say (``Spoken``)
    v1/keys/<key>.json        synthesis key → audio SHA-256
    v1/texts/<key>.json       (voice, speed, text) → audio SHA-256 of its latest synthesis
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from media.pcm import resample, to_mono
from media.prompts import (
    SAMPLE_RATE,
    Prompt,
    PromptError,
    prompt_from_audio,
    prompt_from_ulaw,
)
from media.wavfile import UnsupportedAudio, load_audio

__all__ = [
    "CACHE_FORMAT",
    "ESPEAK",
    "INSTALL_HINT",
    "SPEED_WPM",
    "VOICES",
    "PromptCache",
    "SpeechError",
    "Spoken",
    "ulaw_wav",
]

CACHE_FORMAT = 1  # raise it when the conversion below changes what the same text sounds like
ESPEAK = "espeak-ng"
VOICES: Mapping[str, str] = MappingProxyType({"en": "en-gb", "sv": "sv"})
SPEED_WPM = 150
PEAK_DBFS = -3.0
# Silence at either end is cut down to this much; the call flow adds its own pauses.
KEEP_SILENCE_S = 0.1
# Anything quieter than this relative to the peak counts as silence when trimming.
SILENCE_BELOW_PEAK_DB = -40.0
INSTALL_HINT = (
    "install espeak-ng (Debian/Ubuntu: `apt-get install -y espeak-ng`), or build the prompts "
    "where it is installed (`ivr prompts build`) and copy the cache directory here"
)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# The μ-law WAV header this cache writes: RIFF, an 18-byte fmt chunk (format 7, μ-law, 8 kHz
# mono, 8 bits), a fact chunk and the data chunk's header; the rest of the file is the data.
_HEADER_BYTES = 58


class SpeechError(RuntimeError):
    """A prompt could not be synthesised (espeak-ng missing or failing, an unknown language);
    the message is one line and says what to do."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Spoken:
    """What one cached audio file says: the index entry found by its audio SHA-256."""

    sha256: str  # of the μ-law bytes played (Prompt.sha256)
    language: str
    text: str
    voice: str
    speed_wpm: int
    engine: str  # "espeak-ng 1.51"
    duration_ms: int


def ulaw_wav(ulaw: bytes) -> bytes:
    """A WAV file (format 7, μ-law, 8 kHz mono) whose data chunk is exactly ``ulaw``."""
    n = len(ulaw)
    return (
        b"RIFF"
        + (_HEADER_BYTES - 8 + n + (n & 1)).to_bytes(4, "little")
        + b"WAVEfmt "
        + (18).to_bytes(4, "little")
        + (7).to_bytes(2, "little")  # WAVE_FORMAT_MULAW
        + (1).to_bytes(2, "little")
        + SAMPLE_RATE.to_bytes(4, "little")
        + SAMPLE_RATE.to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + (8).to_bytes(2, "little")
        + (0).to_bytes(2, "little")
        + b"fact"
        + (4).to_bytes(4, "little")
        + n.to_bytes(4, "little")
        + b"data"
        + n.to_bytes(4, "little")
        + ulaw
        + (b"\xff" if n & 1 else b"")  # RIFF chunks are padded to even lengths
    )


def _ulaw_of(wav: bytes) -> bytes | None:
    """The μ-law bytes of a file ``ulaw_wav`` wrote, or None if it is not one."""
    if len(wav) < _HEADER_BYTES:
        return None
    n = int.from_bytes(wav[_HEADER_BYTES - 4 : _HEADER_BYTES], "little")
    data = wav[_HEADER_BYTES : _HEADER_BYTES + n]
    return data if len(data) == n and ulaw_wav(data) == wav else None


def _digest(*parts: str) -> str:
    # Length-prefixed, so no two different tuples of parts hash alike.
    h = hashlib.sha256()
    for part in parts:
        raw = part.encode("utf-8")
        h.update(len(raw).to_bytes(8, "big") + raw)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary name, then a rename), so a
    concurrent reader sees the old file, the new one, or none; never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _trim_and_normalise(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        raise SpeechError("espeak-ng produced silence")
    loud = np.flatnonzero(np.abs(x) > peak * 10 ** (SILENCE_BELOW_PEAK_DB / 20))
    keep = round(KEEP_SILENCE_S * SAMPLE_RATE)
    start = max(0, int(loud[0]) - keep)
    stop = min(x.size, int(loud[-1]) + 1 + keep)
    trimmed = x[start:stop]
    scaled: npt.NDArray[np.float64] = trimmed * (10 ** (PEAK_DBFS / 20) / peak)
    return scaled


class PromptCache:
    """The synthesised prompts kept in ``directory`` (created on first write).

    ``prompt(language, text, prompt_id=...)`` gives the prompt, synthesising it if the cache
    lacks it; ``cached(language, text)`` only looks; ``spoken(sha256)`` says what an audio hash
    is the speech of. Safe to use from several threads and processes at once.
    """

    def __init__(self, directory: Path, *, espeak: str = ESPEAK) -> None:
        self.directory = Path(directory)
        self.espeak = espeak
        self._root = self.directory / f"v{CACHE_FORMAT}"
        self._engine: str | None = None
        self._engine_known = False

    # -- the engine -------------------------------------------------------------------------
    def engine(self) -> str | None:
        """ "espeak-ng 1.51", or None when espeak-ng is not installed (asked once)."""
        if not self._engine_known:
            self._engine = _engine_version(self.espeak)
            self._engine_known = True
        return self._engine

    def require_engine(self) -> str:
        engine = self.engine()
        if engine is None:
            raise SpeechError(f"{self.espeak} is not installed; {INSTALL_HINT}")
        return engine

    # -- keys -------------------------------------------------------------------------------
    @staticmethod
    def voice(language: str) -> str:
        try:
            return VOICES[language]
        except KeyError:
            raise SpeechError(
                f"no voice for language {language!r} (known: {', '.join(VOICES)})"
            ) from None

    def synthesis_key(self, language: str, text: str, engine: str) -> str:
        """SHA-256 over everything that decides the audio: format, engine, voice, speed, text."""
        return _digest(str(CACHE_FORMAT), engine, self.voice(language), str(SPEED_WPM), text)

    def _text_key(self, language: str, text: str) -> str:
        return _digest(str(CACHE_FORMAT), "any engine", self.voice(language), str(SPEED_WPM), text)

    # -- reading ----------------------------------------------------------------------------
    def spoken(self, sha256: str) -> Spoken | None:
        """What the cached audio with this SHA-256 says, if the cache holds it."""
        if not _SHA256_HEX.fullmatch(sha256):
            return None
        raw = _read_json(self._root / "audio" / f"{sha256}.json")
        if raw is None:
            return None
        try:
            spoken = Spoken(**raw)  # type: ignore[arg-type]
        except TypeError:
            return None
        return spoken if spoken.sha256 == sha256 else None

    def _audio(self, sha256: str) -> bytes | None:
        try:
            wav = (self._root / "audio" / f"{sha256}.wav").read_bytes()
        except OSError:
            return None
        ulaw = _ulaw_of(wav)
        if ulaw is None or hashlib.sha256(ulaw).hexdigest() != sha256:
            return None  # torn or altered: as if absent, and made again
        return ulaw

    def cached(self, language: str, text: str) -> Spoken | None:
        """The cached speech of ``text``, without synthesising: the one this espeak-ng makes,
        or, without espeak-ng, the latest any version made."""
        engine = self.engine()
        if engine is not None:
            ref = _read_json(
                self._root / "keys" / f"{self.synthesis_key(language, text, engine)}.json"
            )
        else:
            ref = _read_json(self._root / "texts" / f"{self._text_key(language, text)}.json")
        sha = ref.get("sha256") if ref else None
        if not isinstance(sha, str):
            return None
        spoken = self.spoken(sha)
        if spoken is None or spoken.text != text or spoken.language != language:
            return None
        if not (self._root / "audio" / f"{sha}.wav").is_file():
            return None
        return spoken

    def _prompt(self, spoken: Spoken, prompt_id: str) -> Prompt | None:
        ulaw = self._audio(spoken.sha256)
        if ulaw is None:
            return None
        return prompt_from_ulaw(
            ulaw,
            prompt_id=prompt_id,
            language=spoken.language,
            text=spoken.text,
            source=os.fspath(self._root / "audio" / f"{spoken.sha256}.wav"),
        )

    # -- the prompt -------------------------------------------------------------------------
    def prompt(self, language: str, text: str, *, prompt_id: str) -> tuple[Prompt, bool]:
        """``text`` spoken in ``language`` as prompt ``prompt_id``, and whether it was made now
        (False: found in the cache). Raises ``SpeechError`` if it must be made and cannot."""
        found = self.cached(language, text)
        if found is not None:
            prompt = self._prompt(found, prompt_id)
            if prompt is not None:
                return prompt, False
        return self._synthesise(language, text, prompt_id), True

    def _synthesise(self, language: str, text: str, prompt_id: str) -> Prompt:
        if not text.strip():
            raise SpeechError(f"prompt {language}/{prompt_id}: the text is empty")
        voice = self.voice(language)
        engine = self.require_engine()
        self._root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self._root, prefix=".speak-") as tmp:
            raw = Path(tmp) / "espeak.wav"
            _run_espeak(self.espeak, voice, text, raw)
            try:
                samples, rate = load_audio(raw)
            except UnsupportedAudio as exc:
                raise SpeechError(f"espeak-ng wrote audio that cannot be read: {exc}") from exc
        x = resample(to_mono(samples).astype(np.float64), rate, SAMPLE_RATE)
        x = _trim_and_normalise(np.asarray(x, dtype=np.float64))
        try:
            made = prompt_from_audio(
                x,
                SAMPLE_RATE,
                prompt_id=prompt_id,
                language=language,
                text=text,
                source=f"{engine} voice {voice}",
            )
        except PromptError as exc:
            raise SpeechError(f"the synthesised prompt is not usable: {exc}") from exc
        spoken = Spoken(
            sha256=made.sha256,
            language=language,
            text=text,
            voice=voice,
            speed_wpm=SPEED_WPM,
            engine=engine,
            duration_ms=made.duration_ms,
        )
        audio = self._root / "audio" / f"{made.sha256}.wav"
        # The audio first, then its index entry, then the references to it: a reader that
        # finds a reference finds what it points to.
        _atomic_write(audio, ulaw_wav(made.ulaw))
        _atomic_write(audio.with_suffix(".json"), _json(asdict(spoken)))
        ref = _json({"sha256": made.sha256})
        _atomic_write(
            self._root / "keys" / f"{self.synthesis_key(language, text, engine)}.json", ref
        )
        _atomic_write(self._root / "texts" / f"{self._text_key(language, text)}.json", ref)
        prompt = self._prompt(spoken, prompt_id)
        if prompt is None:  # pragma: no cover - the file was just written
            raise SpeechError(f"the prompt cache at {self.directory} did not keep {audio.name}")
        return prompt


def _json(value: object) -> bytes:
    return (json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True) + "\n").encode()


def _engine_version(espeak: str) -> str | None:
    """ "espeak-ng 1.51" from ``espeak-ng --version``; None if it is not installed."""
    if shutil.which(espeak) is None:
        return None
    try:
        out = subprocess.run(
            [espeak, "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except FileNotFoundError:
        return None
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise SpeechError(f"{espeak} --version failed: {_stderr(exc)}") from exc
    match = re.search(r"text-to-speech:\s*(\S+)", out)
    words = out.split()
    return f"espeak-ng {match.group(1) if match else (words[-1] if words else 'unknown')}"


def _run_espeak(espeak: str, voice: str, text: str, wav_path: Path) -> None:
    cmd = [espeak, "-v", voice, "-s", str(SPEED_WPM), "-b", "1", "-w", str(wav_path), "--", text]
    try:
        subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    except FileNotFoundError:
        raise SpeechError(f"{espeak} is not installed; {INSTALL_HINT}") from None
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise SpeechError(f"{espeak} failed for voice {voice}: {_stderr(exc)}") from exc


def _stderr(exc: subprocess.CalledProcessError | subprocess.TimeoutExpired) -> str:
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"no answer in {exc.timeout:g} s"
    return " ".join(str(exc.stderr or "").split()) or f"exit status {exc.returncode}"
