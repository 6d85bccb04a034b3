"""The compiled hot path (hotpath.py): loaded only while the build matches every source, never
mixed with source modules, and said plainly when it is not loaded.

``make test`` runs the suite on whatever ``make`` built (the compiled modules where there is a C
compiler); ``.ci/run`` runs it twice, compiled and with ``IVR_HOTPATH=0``, and says which it
expects in ``IVR_HOTPATH_EXPECT``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import hotpath

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


def fake_build(where: Path, **changes: object) -> Path:
    """A build directory as ``hotpath.build`` leaves it, with empty files for the extensions
    (``_check`` looks at the manifest and that the files are there; it loads nothing)."""
    manifest = hotpath.manifest_for({m: hotpath.source_digest(m) for m in hotpath.MODULES})
    for entry in hotpath.built_files(manifest):
        (where / entry).parent.mkdir(parents=True, exist_ok=True)
        (where / entry).write_bytes(b"")
    manifest.update(changes)
    (where / hotpath.MANIFEST).write_text(json.dumps(manifest))
    return where


def test_a_build_that_matches_every_source_is_loaded_whole(tmp_path):
    files, why = hotpath._check(fake_build(tmp_path))
    assert why == ""
    assert set(files) == {*hotpath.MODULES, hotpath.GROUP + "__mypyc"}
    assert files["ivr.calls.rtp"] == tmp_path / "ivr" / "calls" / ("rtp" + SUFFIX)


@pytest.mark.parametrize(
    ("spoil", "said"),
    [
        (lambda where: (where / hotpath.MANIFEST).unlink(), "not built"),
        (lambda where: (where / hotpath.MANIFEST).write_text("{"), "unreadable"),
        (lambda where: (where / hotpath.MANIFEST).write_text("[]"), "unreadable"),
        (lambda where: fake_build(where, format=hotpath.FORMAT + 1), "format"),
        (lambda where: fake_build(where, ext_suffix=".cpython-39-x.so"), "this Python loads"),
        (lambda where: (where / "media" / ("rtp" + SUFFIX)).unlink(), "is missing"),
        (
            lambda where: fake_build(
                where, modules={"media.rtp": {"extension": "x", "source_sha256": "0"}}
            ),
            "another set of modules",
        ),
    ],
)
def test_a_build_that_is_not_whole_or_not_for_this_python_is_not_loaded(tmp_path, spoil, said):
    fake_build(tmp_path)
    spoil(tmp_path)
    files, why = hotpath._check(tmp_path)
    assert files == {}
    assert said in why


def test_a_source_changed_since_the_build_keeps_the_whole_hot_path_on_source(tmp_path):
    build = fake_build(tmp_path)
    manifest = json.loads((build / hotpath.MANIFEST).read_text())
    manifest["modules"]["storage.writer"]["source_sha256"] = "0" * 64  # built from other code
    (build / hotpath.MANIFEST).write_text(json.dumps(manifest))
    files, why = hotpath._check(build)
    assert files == {}
    assert why == "storage/writer.py changed since the build"


def run_python(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IVR_HOTPATH")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=environ | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_stale_build_is_said_and_every_module_then_runs_from_source(tmp_path):
    build = fake_build(tmp_path)
    manifest = json.loads((build / hotpath.MANIFEST).read_text())
    manifest["modules"]["media.rtp"]["source_sha256"] = "0" * 64
    (build / hotpath.MANIFEST).write_text(json.dumps(manifest))
    code = (
        "import json, hotpath, ivr.calls.rtp, storage.writer;"
        "s = hotpath.status();"
        "print(json.dumps([s.compiled, s.why, ivr.calls.rtp.__file__, storage.writer.__file__]))"
    )
    compiled, why, rtp_file, writer_file = json.loads(run_python(code, IVR_HOTPATH_DIR=str(build)))
    assert not compiled
    assert why == "running from source: media/rtp.py changed since the build"
    assert rtp_file.endswith("ivr/calls/rtp.py") and writer_file.endswith("storage/writer.py")


def test_turned_off_or_imported_too_early_it_stays_off_and_says_so(tmp_path):
    code = "import hotpath, ivr; print(hotpath.status().why)"
    said = run_python(code, IVR_HOTPATH="0", IVR_HOTPATH_DIR=str(fake_build(tmp_path)))
    assert said == "turned off (IVR_HOTPATH=0): running from source"
    # A module of the hot path already in the process from source: a build beside it would
    # not mix, so nothing is compiled.
    code = (
        "import importlib.util, sys, hotpath;"
        "spec = importlib.util.spec_from_file_location('storage.format', 'storage/format.py');"
        "sys.modules['storage.format'] = importlib.util.module_from_spec(spec);"
        "print(hotpath.install().why)"
    )
    said = run_python(code, IVR_HOTPATH_DIR=str(fake_build(tmp_path)))
    assert said == "storage.format was imported before hotpath.install"


def test_this_process_runs_the_hot_path_as_its_status_says():
    import ivr.calls.rtp
    import ivr.calls.session
    import ivr.platforms.twilio.messages  # noqa: F401
    import storage.writer  # noqa: F401

    status = hotpath.status()
    files = {m: sys.modules[m].__file__ or "" for m in hotpath.MODULES if m in sys.modules}
    assert set(files) == set(hotpath.MODULES)
    compiled = {m for m, f in files.items() if f.endswith(SUFFIX)}
    assert compiled == (set(hotpath.MODULES) if status.compiled else set()), status.why
    expected = os.environ.get("IVR_HOTPATH_EXPECT")  # set by .ci/run for each of its passes
    if expected is not None:
        assert ("compiled" if status.compiled else "source") == expected, status.why


def test_the_makefile_builds_the_modules_hotpath_loads():
    text = (ROOT / "Makefile").read_text()
    found = re.search(r"^HOTPATH_SOURCES := ((?:.*\\\n)*.*)$", text, re.M)
    assert found is not None
    listed = found.group(1).replace("\\\n", " ").split()
    assert listed == [str(hotpath.source_path(m).relative_to(ROOT)) for m in hotpath.MODULES]
