"""The hot path, compiled: the modules every media frame and RTP packet goes through, built as C
extensions by mypyc, and loaded in place of their source only while they match it.

Why: what a call costs beyond the bare reference is mostly the interpreter on the per-frame
path (README, Performance). mypyc compiles these modules as they are, from the type hints that
strict mypy already checks, so the source stays the one truth and nothing is written twice.

How it is kept safe:

- The build (``python -m hotpath build``, run by ``make run`` and ``make test`` where a C
  compiler is found) goes to ``build/hotpath/`` beside this file (``IVR_HOTPATH_DIR`` to put it
  elsewhere), never next to the sources: an extension next to its ``.py`` would shadow it, and
  an edit to the source would silently not run.
- Its manifest names each module's extension and the SHA-256 of the source it was built from.
  ``install`` puts a finder for them in front of every other only if every source still
  matches and the build is for this interpreter; otherwise nothing is compiled and ``status``
  says why. All or none: compiled modules call each other's native code directly and accept
  only each other's native classes, so a build is never mixed with a changed source.
- ``install`` runs first thing in each top package (``ivr``, ``media``, ``storage``), so before
  any of these modules can be imported from source. ``IVR_HOTPATH=0`` turns it off.

The build is optional: without it (no compiler, ``IVR_HOTPATH=0``, a stale build) the same
modules run from source and do the same thing, only slower. ``make test`` runs the suite on
whichever is there; ``.ci/run`` runs it on both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent
# Every module on the per-frame path of either platform, and what they share with it. Each is
# checked by strict mypy already; mypyc needs nothing more of them.
MODULES = (
    "media.rtp",
    "storage.format",
    "storage.writer",
    "ivr.calls.numbering",
    "ivr.calls.rtp",
    "ivr.calls.session",
    "ivr.platforms.twilio.messages",
)
GROUP = "ivr_hotpath"  # the shared library's module name is this and "__mypyc"
MANIFEST = "manifest.json"
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Status:
    compiled: bool
    why: str  # one line for an operator: what runs, and why not compiled when it is not
    build_dir: str
    modules: tuple[str, ...] = ()


_status: Status | None = None


def build_dir() -> Path:
    return Path(os.environ.get("IVR_HOTPATH_DIR") or ROOT / "build" / "hotpath")


def source_path(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def source_digest(module: str) -> str:
    return hashlib.sha256(source_path(module).read_bytes()).hexdigest()


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the built extension of each compiled module (and of their shared library)."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def _check(where: Path) -> tuple[dict[str, Path], str]:
    """The extensions to load, or none and why."""
    manifest = where / MANIFEST
    if not manifest.exists():
        return {}, f"not built ({where} has no {MANIFEST}: python -m hotpath build)"
    try:
        data = json.loads(manifest.read_text())
        if data.get("format") != FORMAT:
            return {}, f"{manifest}: format {data.get('format')!r}, not {FORMAT}; build again"
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        if data.get("ext_suffix") != suffix:
            return {}, f"built for {data.get('ext_suffix')!r}, this Python loads {suffix!r}"
        modules: dict[str, dict[str, str]] = data["modules"]
        if set(modules) != set(MODULES):
            return {}, "built for another set of modules; build again"
        files = {GROUP + "__mypyc": where / data["shared_library"]}
        for module, entry in modules.items():
            if source_digest(module) != entry["source_sha256"]:
                return {}, f"{source_path(module).relative_to(ROOT)} changed since the build"
            files[module] = where / entry["extension"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # not ours
        return {}, f"{manifest}: unreadable ({exc}); build again"
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        return {}, f"{missing[0]} is missing; build again"
    return files, ""


def install() -> Status:
    """Load the compiled modules from now on where the build matches the sources (once per
    process; later calls give the same answer)."""
    global _status
    if _status is not None:
        return _status
    where = build_dir()
    if os.environ.get("IVR_HOTPATH", "1") == "0":
        _status = Status(False, "turned off (IVR_HOTPATH=0): running from source", str(where))
        return _status
    early = [m for m in MODULES if m in sys.modules]
    if early:  # imported from source already: compiled ones beside them would not mix
        _status = Status(False, f"{early[0]} was imported before hotpath.install", str(where))
        return _status
    files, why = _check(where)
    if not files:
        _status = Status(False, f"running from source: {why}", str(where))
        return _status
    sys.meta_path.insert(0, _Finder(files))
    _status = Status(True, f"compiled with mypyc ({len(MODULES)} modules)", str(where), MODULES)
    return _status


def status() -> Status:
    """What ``install`` found, with each compiled module checked to be the extension."""
    found = install()
    if found.compiled:
        for module in MODULES:
            loaded = sys.modules.get(module)
            if loaded is not None and not str(getattr(loaded, "__file__", "")).endswith(
                sysconfig.get_config_var("EXT_SUFFIX")
            ):
                return Status(False, f"{module} runs from source", found.build_dir)
    return found


def manifest_for(digests: dict[str, str]) -> dict[str, Any]:
    """The manifest of a build of this Python from sources of these SHA-256 digests."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    modules = {
        m: {"extension": str(Path(*m.split(".")).with_suffix("")) + suffix, "source_sha256": d}
        for m, d in digests.items()
    }
    return {
        "format": FORMAT,
        "ext_suffix": suffix,
        "shared_library": GROUP + "__mypyc" + suffix,
        "modules": modules,
    }


def built_files(manifest: dict[str, Any]) -> list[str]:
    """The files a build's manifest names, relative to the build directory."""
    return [manifest["shared_library"], *(e["extension"] for e in manifest["modules"].values())]


def build(where: Path | None = None, *, quiet: bool = False) -> Path:
    """Compile ``MODULES`` with mypyc into ``where`` (default ``build_dir()``) and write the
    manifest last, so that a build cut short is never loaded."""
    import tempfile

    from mypyc.build import mypycify
    from setuptools import setup  # type: ignore[import-untyped,unused-ignore]

    where = (where or build_dir()).resolve()
    # The project's mypy settings (pyproject.toml), as `make typecheck` uses them.
    sources = [
        "--config-file",
        str(ROOT / "pyproject.toml"),
        *(str(source_path(m)) for m in MODULES),
    ]
    digests = {m: source_digest(m) for m in MODULES}
    (where / MANIFEST).unlink(missing_ok=True)
    where.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="hotpath-") as tmp:
        # setuptools reads the configuration files of the directory it runs in: an empty one,
        # so that it builds these extensions and nothing of the project's own packaging.
        os.chdir(tmp)
        try:
            extensions = mypycify(sources, opt_level="3", target_dir="c", group_name=GROUP)
            args = ["build_ext", "--force", "--build-lib", str(where), "--build-temp", "o"]
            setup(name=GROUP, ext_modules=extensions, script_args=(["-q"] if quiet else []) + args)
        finally:
            os.chdir(cwd)
    manifest = manifest_for(digests)
    for entry in built_files(manifest):
        if not (where / entry).is_file():
            raise RuntimeError(f"mypyc built no {where / entry}")
    tmp_manifest = where / (MANIFEST + ".part")
    tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp_manifest.replace(where / MANIFEST)
    return where


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m hotpath", description="Build or check the compiled hot path (mypyc)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="compile the hot-path modules into the build directory")
    check = sub.add_parser("status", help="say whether the compiled build would be used")
    check.add_argument("--json", action="store_true", help="print the status as JSON")
    args = parser.parse_args(argv)
    if args.command == "build":
        where = build(quiet=True)
        print(f"hotpath: {len(MODULES)} modules compiled into {where}")
        return 0
    found = status()
    if args.json:
        print(json.dumps(dataclasses.asdict(found)))
    else:
        print(f"hotpath: {found.why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
