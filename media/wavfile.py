"""Reading and writing audio files (prompts, uploads, exported recordings) via soundfile.

``load_audio`` is the single gate through which external audio enters the service, so it
validates what the rest of the pipeline assumes (1 or 2 channels, a usable sample rate, some
audio at all) and reports every rejection as ``UnsupportedAudio`` with a one-line message that
names the file, suitable for showing to whoever supplied it.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import soundfile as sf

__all__ = ["MAX_CHANNELS", "MIN_SAMPLE_RATE", "UnsupportedAudio", "load_audio", "write_wav"]

# A call recording has at most two legs: the caller and the agent.
MAX_CHANNELS = 2
# Below the 8 kHz telephone rate there is nothing to resample *down* to without losing speech.
MIN_SAMPLE_RATE = 8000


class UnsupportedAudio(ValueError):
    """An audio file that cannot be read or that this service does not accept."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _reject(path: str | os.PathLike[str], reason: str) -> UnsupportedAudio:
    return UnsupportedAudio(_one_line(f"unsupported audio file {os.fspath(path)!r}: {reason}"))


def load_audio(path: str | os.PathLike[str]) -> tuple[npt.NDArray[np.float32], int]:
    """Read an audio file in any format libsndfile understands.

    Returns ``(samples, sample_rate)`` with ``samples`` float32, always shaped (frames, channels)
    and nominally in [-1, 1] (float-encoded files may exceed that; ``float_to_int16`` clips).
    Raises ``UnsupportedAudio`` if the file is missing, unreadable or in an unknown format, has
    no audio, has more than two channels, or is sampled below 8 kHz.
    """
    # libsndfile reports a missing file or a directory as a bare "System error".
    if not os.path.isfile(path):
        raise _reject(path, "no such file" if not os.path.exists(path) else "not a regular file")
    try:
        with sf.SoundFile(path) as f:
            # soundfile is untyped (see [tool.mypy] in pyproject.toml): name what it returns.
            channels: int = f.channels
            rate: int = f.samplerate
            # Check the header before decoding so an oversized multichannel file is rejected
            # without reading it into memory.
            if channels < 1:
                raise _reject(path, "it has no audio channels")
            if channels > MAX_CHANNELS:
                raise _reject(
                    path,
                    f"it has {channels} channels; at most {MAX_CHANNELS} channels "
                    "(caller and agent) are supported",
                )
            if rate < MIN_SAMPLE_RATE:
                raise _reject(
                    path, f"sample rate {rate} Hz is below the minimum of {MIN_SAMPLE_RATE} Hz"
                )
            samples: npt.NDArray[np.float32] = f.read(dtype="float32", always_2d=True)
    except UnsupportedAudio:
        raise
    except sf.LibsndfileError as exc:
        # libsndfile's own text repeats the path ("Error opening '...': ..."); keep just the cause.
        cause = (getattr(exc, "error_string", None) or str(exc)).rstrip(".")
        raise _reject(path, f"cannot decode it ({cause})") from exc
    # soundfile raises TypeError for headerless formats (RAW) it cannot open without parameters.
    except (sf.SoundFileError, OSError, TypeError, ValueError) as exc:
        raise _reject(path, f"cannot decode it ({str(exc) or type(exc).__name__})") from exc
    # Some containers do not record a frame count, so only the decoded data is authoritative.
    if samples.shape[0] == 0:
        raise _reject(path, "it contains no audio frames")
    return samples, rate


def write_wav(
    path: str | os.PathLike[str] | BinaryIO, samples_int16: npt.NDArray[np.int16], rate: int
) -> None:
    """Write int16 samples as a 16-bit PCM WAV: 1-D is mono, (frames, 2) is stereo."""
    samples = np.asarray(samples_int16)
    if samples.dtype != np.int16:
        raise TypeError(f"write_wav needs int16 samples, got {samples.dtype}")
    if not (samples.ndim == 1 or (samples.ndim == 2 and samples.shape[1] in (1, MAX_CHANNELS))):
        raise ValueError(f"write_wav needs a 1-D or (frames, 1|2) array, got shape {samples.shape}")
    if int(rate) != rate or rate <= 0:
        raise ValueError(f"sample rate must be a positive integer, got {rate}")
    # Force the container and subtype so the extension of `path` cannot change the output.
    sf.write(path, samples, int(rate), subtype="PCM_16", format="WAV")


def wav_header(frames: int, channels: int, rate: int) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV holding ``frames`` samples per channel: lets a
    server stream samples straight from memory instead of building a second copy of the file."""
    data = frames * channels * 2
    return (
        b"RIFF"
        + (36 + data).to_bytes(4, "little")
        + b"WAVEfmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")  # PCM
        + channels.to_bytes(2, "little")
        + rate.to_bytes(4, "little")
        + (rate * channels * 2).to_bytes(4, "little")
        + (channels * 2).to_bytes(2, "little")
        + (16).to_bytes(2, "little")
        + b"data"
        + data.to_bytes(4, "little")
    )
