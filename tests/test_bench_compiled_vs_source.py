"""``bench/compiled_vs_source.py`` (``make bench-hotpath``): bench/calls.py with the hot path
from source and compiled, alternating, each side checked to have run what it was asked to."""

from __future__ import annotations

import json

import hotpath
from tests.bench_scripts import run_bench


def test_a_pair_of_runs_from_source_and_compiled_or_a_plain_refusal_without_a_build():
    done = run_bench(
        "compiled_vs_source.py",
        "--pairs",
        "1",
        "--json",
        "--",
        "--calls",
        "2",
        "--duration",
        "1",
        timeout=300,
    )
    built, _ = hotpath._check(hotpath.build_dir())
    if not built:  # make builds it wherever there is a C compiler; said plainly where not
        assert done.returncode == 2
        assert "asked for the compiled hot path, the service ran 'source'" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for side in ("source", "compiled"):
        (run,) = result["runs"][side]
        assert run["ok"] and run["cpu_ratio"] > 0
        assert result["summary"][side]["cpu_ratio"]["median"] == run["cpu_ratio"]
    assert result["ok"]


def test_bad_arguments_are_refused():
    done = run_bench("compiled_vs_source.py", "--pairs", "0")
    assert done.returncode == 2 and "--pairs must be 1..50" in done.stderr
    done = run_bench("compiled_vs_source.py", "--", "--calls", "2", "--repeats", "2")
    assert done.returncode == 2 and "--repeats, --json and --url are its own" in done.stderr
