"""ivr/log_limits.py: the one rule for warnings anyone can provoke (bad webhooks and stream
messages, bad ARI events, the connection and call caps, running out of descriptors)."""

from __future__ import annotations

import logging

from ivr.log_limits import Warnings


def test_the_first_of_a_kind_is_logged_then_one_per_interval_with_the_count_held(caplog):
    now = [0.0]
    warnings = Warnings(logging.getLogger("test.limits"), every=60.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="test.limits")
    assert warnings.warn("bad", "bad input: %s", "a")
    assert not any(warnings.warn("bad", "bad input: %s", "b") for _ in range(5))
    assert warnings.warn("other", "another kind")  # kinds are apart
    now[0] = 59.9
    assert not warnings.warn("bad", "bad input: %s", "c")
    now[0] = 60.0
    assert warnings.warn("bad", "bad input: %s", "d")
    now[0] = 200.0
    assert warnings.warn("bad", "bad input: %s", "e")  # nothing held: no count
    assert [r.getMessage() for r in caplog.records] == [
        "bad input: a",
        "another kind",
        "bad input: d (6 more since the last such line)",
        "bad input: e",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
