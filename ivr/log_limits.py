"""Warnings about what anyone can make happen (bad input from outside, a full service, running
out of descriptors): the first of each kind is logged, then at most one per interval, saying how
many were held back since the last. A flood costs a few lines, never one each.

Kinds are the service's own words, never the input's, so the table holds a handful of entries.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

WARN_EVERY_SECONDS = 60.0


@dataclass
class Warnings:
    log: logging.Logger
    every: float = WARN_EVERY_SECONDS
    clock: Callable[[], float] = time.monotonic
    _last: dict[str, float] = field(default_factory=dict)
    _held: Counter[str] = field(default_factory=Counter)

    def warn(self, kind: str, message: str, *args: object) -> bool:
        """Log ``message % args`` as a warning unless one of ``kind`` was logged less than
        ``every`` seconds ago; True when it was logged."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.every:
            self._held[kind] += 1
            return False
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        if held:
            message += " (%d more since the last such line)"
            args = (*args, held)
        self.log.warning(message, *args)
        return True
