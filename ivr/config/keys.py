"""Which TOML key sets which model field: declared on the field, read back as key lists.

The loader refuses every key it does not know (a typo must not quietly turn a rule off), so its
lists of known keys have to match the model exactly. Rather than restating them, each dataclass
field says where its value comes from, in its ``metadata``:

- nothing: the key of the field's own name, in the dataclass's table;
- ``key("service.public_url")``: a key named differently, or one in a sub-table (dotted path);
- ``not_a_key()``: nothing in the file sets it (a table's name, a secret read from the
  environment, a value the loader derives);
- ``refuses({"password": "why"})``, combinable with the above (``not_a_key() | refuses(...)``):
  keys someone might write for this field that are refused with an explanation, such as a secret
  that belongs in the environment.

:func:`table_keys` reads the declarations back for one table of the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["TableKeys", "key", "not_a_key", "refuses", "table_keys"]

# Namespaced so the metadata cannot collide with another library's use of field metadata.
_PATH = "ivr.config.key"
_REFUSES = "ivr.config.refuses"
_NO_KEY = object()


def key(path: str) -> dict[str, Any]:
    """Field metadata: the field is set by the key at ``path``, dotted from the model's table."""
    return {_PATH: path}


def not_a_key() -> dict[str, Any]:
    """Field metadata: no key in the file sets the field."""
    return {_PATH: _NO_KEY}


def refuses(keys: Mapping[str, str]) -> dict[str, Any]:
    """Field metadata: keys (dotted, like :func:`key`) refused with the reason given for each."""
    return {_REFUSES: MappingProxyType(dict(keys))}


@dataclass(frozen=True, slots=True)
class TableKeys:
    """What one table of the file may hold."""

    # In field order, each once: "known keys: ..." messages list them in this order.
    accepted: tuple[str, ...]
    refused: Mapping[str, str]  # key -> why it is refused


def table_keys(model: type[DataclassInstance], within: str = "") -> TableKeys:
    """The keys of the table ``within`` (dotted; ``""``: the model's own table) of ``model``."""
    prefix = f"{within}." if within else ""
    accepted: dict[str, None] = {}  # a dict keeps field order and drops repeats
    refused: dict[str, str] = {}
    for f in fields(model):
        path = f.metadata.get(_PATH, f.name)
        if isinstance(path, str) and path.startswith(prefix):
            # A field deeper down (service.public_url) makes its sub-table a key here (service).
            accepted.setdefault(path.removeprefix(prefix).split(".", 1)[0], None)
        for name, why in f.metadata.get(_REFUSES, {}).items():
            rest = name.removeprefix(prefix)
            if name.startswith(prefix) and "." not in rest:
                refused[rest] = why
    return TableKeys(tuple(accepted), MappingProxyType(refused))
