"""Refused unauthenticated API requests, audited in aggregate so that nobody can grow the
audit log without bound.

An authenticated caller's refusals (403, 404, 409...) are audited one by one: a token holder is
accountable. A request without a valid token has no one behind it, and auditing each one would
let any client on the network write rows at will (2,000 requests once added 20 MB). So per
window (a minute in the service) and per (source, reason):

- the **first** attempt is audited at once, as before (``api.<action>.denied``, status 401,
  with the source and the reason), so a single attempt is on record even if the process dies;
- the **others** are only counted, and one ``api.denied.repeated`` entry per (source, reason)
  says how many there were, for which actions, and a few of their targets, when the window
  closes (and at shutdown).

Sources are the peer address (an IPv6 address counts as its /64, which one client usually
holds whole); past :data:`MAX_SOURCES` sources in one window the rest count as ``other``.
Targets are cut to :data:`TARGET_CHARS` characters everywhere. So a window writes at most
``2 × (MAX_SOURCES + 1) × len(reasons)`` entries whatever arrives.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_SOURCES = 16  # distinct sources per window with entries of their own
OTHER_SOURCE = "other"
TARGET_CHARS = 64
SAMPLE_TARGETS = 3  # distinct targets kept per (source, reason) and window
REPEATED_ACTION = "api.denied.repeated"


def short_target(target: str | None) -> str | None:
    """A target as audited: at most :data:`TARGET_CHARS` characters, a cut one marked with …."""
    if target is None or len(target) <= TARGET_CHARS:
        return target
    return target[: TARGET_CHARS - 1] + "…"


def source_of(remote: str | None) -> str:
    """What refusals are grouped by: the peer's address, an IPv6 one as its /64."""
    if not remote:
        return "unknown"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return short_target(remote) or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Tally:
    count: int = 0  # beyond the first, which was audited at once
    actions: Counter[str] = field(default_factory=Counter)
    targets: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RepeatedRefusals:
    """One (source, reason) of a closed window: what the ``api.denied.repeated`` entry holds."""

    source: str
    reason: str
    count: int
    actions: dict[str, int]
    targets: tuple[str, ...]

    def detail(self) -> dict[str, Any]:
        return {
            "status": 401,
            "source": self.source,
            "reason": self.reason,
            "count": self.count,
            "actions": self.actions,
            "targets": list(self.targets),
        }


class RefusalLedger:
    """The current window's unauthenticated refusals, and every one since start (for /metrics)."""

    def __init__(self, max_sources: int = MAX_SOURCES) -> None:
        self.max_sources = max_sources
        self.total: Counter[str] = Counter()  # by reason, since start
        self._window: dict[tuple[str, str], _Tally] = {}
        self._sources: set[str] = set()

    def note(self, remote: str | None, reason: str, action: str, target: str | None) -> str | None:
        """Count one refusal. The source to audit it under now if it is the first of its
        (source, reason) in this window, else None (it is in the window's summary)."""
        self.total[reason] += 1
        source = source_of(remote)
        if source not in self._sources:
            if len(self._sources) >= self.max_sources:
                source = OTHER_SOURCE
            else:
                self._sources.add(source)
        tally = self._window.get((source, reason))
        if tally is None:
            self._window[(source, reason)] = _Tally()
            return source
        tally.count += 1
        tally.actions[action] += 1
        short = short_target(target)
        if short is not None and short not in tally.targets and len(tally.targets) < SAMPLE_TARGETS:
            tally.targets.append(short)
        return None

    def close_window(self) -> list[RepeatedRefusals]:
        """End the window: what it counted beyond each first attempt, and start a new one."""
        window, self._window, self._sources = self._window, {}, set()
        return [
            RepeatedRefusals(source, reason, t.count, dict(t.actions), tuple(t.targets))
            for (source, reason), t in sorted(window.items())
            if t.count
        ]
