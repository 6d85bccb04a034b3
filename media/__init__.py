"""Audio handling for the call-recording service: G.711 codecs, PCM utilities and file I/O.

Pure audio code (numpy and soundfile only); it knows nothing about calls, consent or storage.
"""

import hotpath

hotpath.install()  # before any module it compiles can be imported from source (hotpath.py)

# After it, so that none of these can ever bring in a compiled module from source first.
from media.g711 import (  # noqa: E402
    ALAW_SILENCE,
    ULAW_SILENCE,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)
from media.pcm import float_to_int16, frame, int16_to_float, resample, to_mono  # noqa: E402
from media.wavfile import UnsupportedAudio, load_audio, write_wav  # noqa: E402

__all__ = [
    "ALAW_SILENCE",
    "ULAW_SILENCE",
    "UnsupportedAudio",
    "alaw_decode",
    "alaw_encode",
    "float_to_int16",
    "frame",
    "int16_to_float",
    "load_audio",
    "resample",
    "to_mono",
    "ulaw_decode",
    "ulaw_encode",
    "write_wav",
]
