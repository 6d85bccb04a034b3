"""A module of ours run from its source file, whatever the import system gives for its name.

With the compiled hot path loaded (hotpath.py), ``import media.rtp`` gives the extension that
mypyc built; a test that subclasses one of its classes, or compares the compiled code with the
code as written, takes the source from here instead. The module is loaded under a name of its
own, so it never replaces the one the rest of the process uses.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from types import ModuleType
from typing import Any

import hotpath

_loaded: dict[str, ModuleType] = {}


def from_source(module: str) -> ModuleType:
    if module not in _loaded:
        name = f"{module}__source"
        spec = importlib.util.spec_from_file_location(name, hotpath.source_path(module))
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded  # dataclasses look their module up while it runs
        spec.loader.exec_module(loaded)
        _loaded[module] = loaded
    return _loaded[module]


def values(obj: Any) -> tuple[Any, ...]:
    """A dataclass instance's fields as a tuple: equal between the compiled class and the
    source's, which ``==`` never is (two classes)."""
    return tuple(getattr(obj, f.name) for f in dataclasses.fields(obj))
