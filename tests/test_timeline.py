"""Laying frames onto a timeline: gaps become silence, tracks line up, both entry points agree."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from media.g711 import ulaw_decode
from media.timeline import Timeline


@dataclass
class F:
    track: int
    timestamp_ms: int
    payload: bytes


def test_gaps_are_silence_and_tracks_are_columns():
    t = Timeline("pcmu", 8000, 2)
    t.add([F(0, 0, b"\x00" * 160), F(1, 40, b"\x80" * 80)])
    out = t.samples()
    assert out.shape == (400, 2)
    assert (out[:160, 0] == ulaw_decode(b"\x00")[0]).all()
    assert (out[160:, 0] == 0).all() and (out[:320, 1] == 0).all()
    assert (out[320:400, 1] == ulaw_decode(b"\x80")[0]).all()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 5000), st.binary(min_size=0, max_size=200)),
        max_size=60,
    ),
    st.integers(0, 50_000),
)
def test_arrays_and_frames_agree(frames, expected):
    by_frames = Timeline("pcmu", 8000, 2)
    by_frames.add([F(*f) for f in frames])
    by_arrays = Timeline("pcmu", 8000, 2, expected_samples=expected)
    for track, ts, payload in frames:  # one call per frame: different batching, same result
        by_arrays.add_arrays(
            np.array([track]),
            np.array([ts]),
            np.array([len(payload)]),
            np.frombuffer(payload, dtype=np.uint8),
        )
    assert np.array_equal(by_frames.samples(), by_arrays.samples())
