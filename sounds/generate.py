#!/usr/bin/env python3
"""Generate the built-in caller prompts (English and Swedish) with espeak-ng.

For every language and prompt id this runs espeak-ng to a temporary WAV, converts it with the
service's own ``media`` code to 8 kHz mono 16-bit PCM (leading/trailing silence trimmed to at
most 100 ms, peak normalised to -3 dBFS) and writes ``prompts/{lang}/{prompt_id}.wav`` plus
``manifest.json`` recording each file's text and SHA-256.

Only this script needs espeak-ng (``apt-get install espeak-ng``); the generated WAVs and the
manifest are committed, and the service and its tests only read them.

Usage (from the repository root):

    .venv/bin/python sounds/generate.py            # regenerate sounds/ in place
    .venv/bin/python sounds/generate.py --check    # verify the committed prompts, change nothing
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SOUNDS_DIR = Path(__file__).resolve().parent
_REPO = SOUNDS_DIR.parent
if str(_REPO) not in sys.path:  # running as a plain script from anywhere
    sys.path.insert(0, str(_REPO))

from media.pcm import float_to_int16, resample, to_mono  # noqa: E402
from media.prompts import (  # noqa: E402
    LANGUAGES,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    PROMPT_IDS,
    SAMPLE_RATE,
    PromptError,
    load_manifest,
)
from media.wavfile import load_audio, write_wav  # noqa: E402

VOICES = {"en": "en-gb", "sv": "sv"}
SPEED_WPM = 150
PEAK_DBFS = -3.0
# Silence at either end is cut down to this much; the call flow adds its own pauses.
KEEP_SILENCE_S = 0.1
# Anything quieter than this relative to the peak counts as silence when trimming.
SILENCE_BELOW_PEAK_DB = -40.0

# The keys named are the defaults (1 = allow, 9 = decline/object, star = stop recording); the
# tests check that the consent and objection texts mention them.
TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "consent_request": (
            "We'd like to record this call to improve our service. "
            "Press 1 to allow it, or 9 to continue without recording. "
            "If you press nothing, we won't record. "
            "Press star at any time to stop recording."
        ),
        "objection_notice": (
            "This call will be recorded for quality and training, "
            "based on our legitimate interest. To object, press 9 now. "
            "You can also press star at any time to stop recording."
        ),
        "notice_only": (
            "This call is recorded because we need it to fulfil our agreement with you "
            "or a legal duty. You can read how we handle your personal data on our website."
        ),
        "recording_started": "The call is now being recorded.",
        "not_recording": "This call will not be recorded.",
        "recording_stopped": (
            "The recording has been stopped, and what was recorded will be deleted."
        ),
        "invalid_key": "That key is not valid.",
        "recording_limit": "The maximum recording time has been reached. Goodbye.",
        "unknown_number": "This number is not in service. Goodbye.",
    },
    "sv": {
        "consent_request": (
            "Vi vill spela in samtalet för att förbättra vår service. "
            "Tryck 1 för att tillåta det, eller 9 för att fortsätta utan inspelning. "
            "Trycker du ingenting spelar vi inte in. "
            "Tryck stjärna när som helst för att stoppa inspelningen."
        ),
        "objection_notice": (
            "Samtalet spelas in för kvalitet och utbildning, "
            "med stöd av vårt berättigade intresse. Tryck 9 nu för att invända. "
            "Du kan också trycka stjärna när som helst för att stoppa inspelningen."
        ),
        "notice_only": (
            "Samtalet spelas in eftersom vi behöver det för att fullgöra vårt avtal med dig "
            "eller en rättslig skyldighet. Du kan läsa om hur vi hanterar dina "
            "personuppgifter på vår webbplats."
        ),
        "recording_started": "Samtalet spelas nu in.",
        "not_recording": "Samtalet kommer inte att spelas in.",
        "recording_stopped": (
            "Inspelningen har stoppats, och det som spelats in kommer att raderas."
        ),
        "invalid_key": "Den knappen är inte giltig.",
        "recording_limit": "Den längsta tillåtna inspelningstiden har nåtts. Hej då.",
        "unknown_number": "Det här numret är inte i bruk. Hej då.",
    },
}


class GenerateError(RuntimeError):
    """espeak-ng is missing or failed, or the output did not validate."""


def _check_texts_cover_prompts() -> None:
    for lang in LANGUAGES:
        have, want = set(TEXTS.get(lang, {})), set(PROMPT_IDS)
        if have != want:
            raise GenerateError(
                f"TEXTS[{lang!r}] must cover exactly media.prompts.PROMPT_IDS "
                f"(missing {sorted(want - have)}, extra {sorted(have - want)})"
            )


def espeak_version(espeak: str) -> str:
    """'espeak-ng 1.51' from ``espeak-ng --version``."""
    try:
        out = subprocess.run(
            [espeak, "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except FileNotFoundError:
        raise GenerateError(
            f"{espeak!r} not found; install it with: apt-get install -y espeak-ng"
        ) from None
    except subprocess.CalledProcessError as exc:
        raise GenerateError(f"{espeak} --version failed: {exc.stderr.strip()}") from exc
    match = re.search(r"text-to-speech:\s*(\S+)", out)
    return f"espeak-ng {match.group(1) if match else out.strip().split()[-1]}"


def synthesize(espeak: str, voice: str, text: str, wav_path: Path) -> None:
    """Run espeak-ng to write ``text`` spoken by ``voice`` to ``wav_path``."""
    cmd = [espeak, "-v", voice, "-s", str(SPEED_WPM), "-b", "1", "-w", str(wav_path), "--", text]
    try:
        subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        raise GenerateError(f"espeak-ng failed for voice {voice}: {exc.stderr.strip()}") from exc


def trim_silence(x: np.ndarray, rate: int) -> np.ndarray:
    """Cut leading/trailing silence down to ``KEEP_SILENCE_S`` at each end."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        raise GenerateError("espeak-ng produced silence")
    loud = np.flatnonzero(np.abs(x) > peak * 10 ** (SILENCE_BELOW_PEAK_DB / 20))
    keep = round(KEEP_SILENCE_S * rate)
    start = max(0, int(loud[0]) - keep)
    stop = min(x.size, int(loud[-1]) + 1 + keep)
    return x[start:stop]


def convert(src: Path, dst: Path) -> float:
    """Convert espeak's WAV to the committed format; returns the duration in seconds."""
    samples, rate = load_audio(src)
    x = resample(to_mono(samples).astype(np.float64), rate, SAMPLE_RATE)
    x = trim_silence(x, SAMPLE_RATE)
    x = x * (10 ** (PEAK_DBFS / 20) / np.max(np.abs(x)))
    write_wav(dst, float_to_int16(x), SAMPLE_RATE)
    return x.size / SAMPLE_RATE


def generate(out_dir: Path, espeak: str, *, verbose: bool = True) -> dict:
    """Write every prompt WAV and the manifest into ``out_dir``; returns the manifest."""
    _check_texts_cover_prompts()
    generator = espeak_version(espeak)
    manifest: dict = {"version": MANIFEST_VERSION, "generator": generator, "prompts": {}}
    with tempfile.TemporaryDirectory(prefix="prompts-espeak-") as tmp:
        for lang in LANGUAGES:
            (out_dir / "prompts" / lang).mkdir(parents=True, exist_ok=True)
            entries: dict[str, dict[str, str]] = {}
            for prompt_id in PROMPT_IDS:
                text = TEXTS[lang][prompt_id]
                raw = Path(tmp) / f"{lang}_{prompt_id}.wav"
                synthesize(espeak, VOICES[lang], text, raw)
                rel = f"prompts/{lang}/{prompt_id}.wav"
                seconds = convert(raw, out_dir / rel)
                digest = hashlib.sha256((out_dir / rel).read_bytes()).hexdigest()
                entries[prompt_id] = {"file": rel, "text": text, "sha256": digest}
                if verbose:
                    print(f"  {rel}  {seconds:5.2f} s")
            manifest["prompts"][lang] = entries
    (out_dir / MANIFEST_NAME).write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    # The service must accept what we just wrote.
    try:
        load_manifest(out_dir)
    except PromptError as exc:
        raise GenerateError(f"generated prompts do not validate: {exc}") from exc
    return manifest


def check(sounds_dir: Path, espeak: str) -> bool:
    """Regenerate into a temp dir and compare with the committed prompts; True if up to date.

    Fails if the committed manifest's texts differ from ``TEXTS`` or the committed files do
    not validate. Audio that differs byte-for-byte from a fresh run is only reported: another
    espeak-ng version legitimately produces slightly different speech.
    """
    ok = True
    try:
        committed = json.loads((sounds_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"FAIL: cannot read {sounds_dir / MANIFEST_NAME}: {exc}")
        return False
    try:
        load_manifest(sounds_dir)
        print(f"ok: {sounds_dir / MANIFEST_NAME} and all its WAVs validate")
    except PromptError as exc:
        print(f"FAIL: {exc}")
        ok = False
    committed_prompts = committed.get("prompts", {}) if isinstance(committed, dict) else {}
    for lang in LANGUAGES:
        for prompt_id in PROMPT_IDS:
            entry = committed_prompts.get(lang, {}).get(prompt_id)
            have = entry.get("text") if isinstance(entry, dict) else None
            if have != TEXTS[lang][prompt_id]:
                print(f"FAIL: text of {lang}/{prompt_id} differs from generate.py")
                print(f"    manifest:    {have!r}")
                print(f"    generate.py: {TEXTS[lang][prompt_id]!r}")
                ok = False
    if ok:
        print("ok: manifest texts match generate.py")

    with tempfile.TemporaryDirectory(prefix="prompts-check-") as tmp:
        fresh = generate(Path(tmp), espeak, verbose=False)
        same_audio = [
            f"{lang}/{pid}"
            for lang, entries in fresh["prompts"].items()
            for pid, entry in entries.items()
            if committed_prompts.get(lang, {}).get(pid, {}).get("sha256") == entry["sha256"]
        ]
    total = len(LANGUAGES) * len(PROMPT_IDS)
    print(
        f"info: {len(same_audio)}/{total} regenerated WAVs are byte-identical "
        f"(committed with {committed.get('generator')!r}, this run {fresh['generator']!r})"
    )
    print("up to date" if ok else "OUT OF DATE: run sounds/generate.py and commit the result")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Generate the built-in caller prompts (en, sv) with espeak-ng as 8 kHz mono "
            "16-bit WAVs plus manifest.json."
        )
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory and report whether the committed "
        "manifest texts match this script (exit 1 if not); changes nothing",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=SOUNDS_DIR,
        help="sounds directory to write or check (default: %(default)s)",
    )
    parser.add_argument(
        "--espeak", default="espeak-ng", help="espeak-ng executable (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if shutil.which(args.espeak) is None:
        print(
            f"error: {args.espeak!r} not found; install it with: apt-get install -y espeak-ng",
            file=sys.stderr,
        )
        return 2
    try:
        if args.check:
            return 0 if check(args.out, args.espeak) else 1
        print(f"writing prompts to {args.out}")
        manifest = generate(args.out, args.espeak)
        print(f"wrote {args.out / MANIFEST_NAME} ({manifest['generator']})")
        return 0
    except GenerateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
