"""Reading the tables of one file while collecting every problem, instead of stopping at the first.

A key whose value is wrong reads as :data:`BAD` (its problem already recorded), so the rest of
the file is still checked and the operator sees everything that is wrong in one go.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ivr.config.checks import Invalid, describe, join, suggest
from ivr.config.keys import TableKeys


class _Bad:
    """The result of a key whose value was wrong (the error is already recorded)."""

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return "<invalid>"


BAD: Any = _Bad()
_ABSENT: Any = object()


def ok(*values: Any) -> bool:
    """Whether none of ``values`` is :data:`BAD`."""
    return not any(v is BAD for v in values)


class Reader:
    """One file's problems, each as ``<file>: <key path>: <problem>``, and how to read its keys."""

    def __init__(self, name: str, base_dir: Path) -> None:
        self.name = name
        self.base_dir = base_dir  # where relative paths in the file start
        self.errors: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{self.name}: {path}: {message}" if path else f"{self.name}: {message}")

    def check_keys(self, table: Mapping[str, Any], path: str, keys: TableKeys) -> None:
        """Report every key of ``table`` that ``keys`` does not accept."""
        for key in table:
            if key in keys.accepted:
                continue
            if key in keys.refused:
                self.error(join(path, key), keys.refused[key])
                continue
            hint = suggest(key, keys.accepted) or f" (known keys: {', '.join(keys.accepted)})"
            self.error(path, f"unknown key {key!r}{hint}")

    def get(
        self,
        table: Mapping[str, Any],
        path: str,
        key: str,
        convert: Callable[[Any], Any],
        default: Any = _ABSENT,
    ) -> Any:
        """The converted value; ``default`` if absent (missing and required when no default)."""
        if key not in table:
            if default is _ABSENT:
                self.error(join(path, key), "required key is missing")
                return BAD
            return default
        try:
            return convert(table[key])
        except Invalid as exc:
            self.error(join(path, key), str(exc))
            return BAD

    def table(
        self, parent: Mapping[str, Any], path: str, key: str, hint: str = ""
    ) -> dict[str, Any]:
        """An optional sub-table (empty when absent or wrong)."""
        value = parent.get(key, {})
        if not isinstance(value, dict):
            self.error(join(path, key), f"expected a table, got {describe(value)}{hint}")
            return {}
        return value
