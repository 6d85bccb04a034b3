"""The robustness suite: quick in the normal run, long with IVR_ROBUSTNESS_INPUTS=20000."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def robustness_inputs() -> int:
    """How many inputs each fuzzer feeds (300 by default; the long run sets 20,000)."""
    return int(os.environ.get("IVR_ROBUSTNESS_INPUTS", "300"))
