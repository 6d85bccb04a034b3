"""What the compiled hot path buys (hotpath.py): ``bench/calls.py`` run with the per-frame
modules from source (``IVR_HOTPATH=0``) and compiled, one run each, alternating, ``--pairs``
times (``make bench-hotpath``).

Alternating single runs put the machine's drift, which moves a run's figures more than many a
change does (README, Performance), on both sides alike; each run is still measured against the
bare reference in the same run. Per side it prints min / median / max of the steady and
whole-call ratios, the service's CPU per call-minute and its memory per call, and which hot path
the service said it ran (``/healthz``): a side that did not run what it was asked to is an
error, so a missing or stale build never passes for the compiled one. Arguments after ``--`` go
to ``bench/calls.py`` (``--repeats 1`` is added). ``--json`` prints everything as one object;
progress goes to stderr. Run from the repository root::

    .venv/bin/python bench/compiled_vs_source.py --pairs 3 -- --calls 250 --duration 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SIDES = ("source", "compiled")
FIGURES = (
    ("steady ratio", "cpu_ratio"),
    ("whole-call ratio", "whole_call_ratio"),
    ("service cpu s per call-minute", "server_cpu_per_call_minute"),
    ("reference cpu s per call-minute", "bare_cpu_per_call_minute"),
    ("service memory KiB per call", "service_rss_kib_per_call"),
)


def one_run(side: str, calls_args: list[str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "IVR_HOTPATH"}
    if side == "source":
        env["IVR_HOTPATH"] = "0"
    done = subprocess.run(
        [sys.executable, str(HERE / "calls.py"), *calls_args, "--repeats", "1", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench/calls.py ({side}) exited {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout)
    if result.get("hot_path") != side:
        raise RuntimeError(
            f"asked for the {side} hot path, the service ran {result.get('hot_path')!r} "
            "(python -m hotpath status says why; make builds it)"
        )
    return result["runs"][0]


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    calls_args = args_in[args_in.index("--") + 1 :] if "--" in args_in else []
    own = args_in[: args_in.index("--")] if "--" in args_in else args_in
    p = argparse.ArgumentParser(
        prog="bench/compiled_vs_source.py",
        description="bench/calls.py with the hot path from source and compiled, alternating.",
    )
    p.add_argument("--pairs", type=int, default=3, help="pairs of runs (default 3)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args(own)
    if not 1 <= args.pairs <= 50:
        print("bench/compiled_vs_source.py: error: --pairs must be 1..50", file=sys.stderr)
        return 2
    if any(a in ("--repeats", "--json", "--url") for a in calls_args):
        print(
            "bench/compiled_vs_source.py: error: --repeats, --json and --url are its own",
            file=sys.stderr,
        )
        return 2
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    try:
        for pair in range(args.pairs):
            for side in SIDES:
                print(f"bench-hotpath: pair {pair + 1}/{args.pairs}, {side}", file=sys.stderr)
                runs[side].append(one_run(side, calls_args))
                last = runs[side][-1]
                print(f"bench-hotpath: steady ratio {last.get('cpu_ratio')}", file=sys.stderr)
    except RuntimeError as exc:
        print(f"bench/compiled_vs_source.py: error: {exc}", file=sys.stderr)
        return 2
    summary = {
        side: {
            key: spread([r[key] for r in runs[side] if r.get(key) is not None])
            for _, key in FIGURES
        }
        for side in SIDES
    }
    ok = all(r["ok"] for side in SIDES for r in runs[side])
    if args.json:
        print(json.dumps({"runs": runs, "summary": summary, "ok": ok}, indent=2, sort_keys=True))
    else:
        print(f"{'min / median / max':34s}" + "".join(f"{side:>26s}" for side in SIDES))
        for label, key in FIGURES:
            cells = []
            for side in SIDES:
                d = summary[side][key]
                cells.append(
                    " / ".join(f"{d[k]:.3g}" for k in ("min", "median", "max")) if d else "-"
                )
            print(f"{label:34s}" + "".join(f"{c:>26s}" for c in cells))
        print(f"{'result':34s}{'OK' if ok else 'FAILED':>26s}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
