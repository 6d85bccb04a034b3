"""What worker processes buy: ``ivr serve --workers K`` for each K of ``--workers`` (default
1 and 2), loaded with K times ``--calls`` real-paced Twilio calls by ``ivr loadtest``'s
generator, in the same run, ``--repeats`` times (``make bench-workers``).

Each K gets a fresh service and data directory (bench/calls.py's ``serve``). The service's CPU
is that of the supervisor and all its workers (``/healthz`` ``worker.all_workers_cpu_seconds``,
which the load test reads), per call-minute over the window when every call streams. With
the work spread evenly, K workers carry K times the calls at the same CPU per call-minute:
the ratio against K = 1 is 1.0. It is printed per run with min/median/max over the runs, with
the frames lost (0 expected) and what one core would carry at the measured cost
(60 / CPU-seconds per call-minute: an estimate from CPU alone, not a measured ceiling). The
load generator runs on the same machine and takes CPU of its own (``sender cpu``): on two
cores, K = 2 shares them with it. ``--json`` prints everything as one object; progress goes to
stderr. Exit 0 when every run completed every call without losing a frame. Run from the
repository root::

    .venv/bin/python bench/workers.py --calls 100 --duration 20 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ivr.cli.loadtest import add_loadtest_arguments, options_from_args
from ivr.harness.loadtest import DRIVERS
from ivr.harness.loadtest.core import aligned, fmt, run

HERE = Path(__file__).resolve().parent


def _calls_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_calls", HERE / "calls.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def parse_counts(text: str) -> list[int]:
    """``--workers``: worker counts, comma-separated, each ≥ 1; the first is the reference."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--workers: expected counts like 1,2, got {text!r}") from None
    if not counts or any(k < 1 or k > 64 for k in counts):
        raise ValueError(f"--workers: each count must be 1..64, got {text!r}")
    return counts


async def one_k(args: argparse.Namespace, k: int) -> dict[str, Any]:
    """One load test against a fresh ``ivr serve --workers k`` with k × --calls calls."""
    bench_calls = _calls_module()
    # Every worker may hold all the calls: the generator's pooled connections do not spread
    # them evenly, and the demo's cap (200 calls per process) would turn some away.
    max_calls = args.calls * k + 50
    async with bench_calls.serve("twilio", args.ari_listen, k, max_calls) as (url, _pid):
        args.url = url
        options = dataclasses.replace(options_from_args(args), calls=args.calls * k)
        report = await run(DRIVERS["twilio"], options)
    cost = report["service"]["cost"]
    per_minute = report["server_cpu_per_call_minute"]
    return {
        "workers": k,
        "calls": options.calls,
        "calls_completed": report["calls_completed"],
        "frames_lost": report["frames_lost"],
        "server_cpu_per_call_minute": per_minute,
        "server_cpu_utilisation": cost.get("server_cpu_utilisation"),
        "sender_cpu_utilisation": cost.get("sender_cpu_utilisation"),
        "calls_per_core_estimate": round(60 / per_minute) if per_minute else None,
        "ok": bool(report["ok"]) and report["frames_lost"] == 0,
        "errors": report["errors"][:3],
    }


async def bench(args: argparse.Namespace, counts: list[int]) -> dict[str, Any]:
    runs: list[list[dict[str, Any]]] = []
    for i in range(args.repeats):
        row = []
        for k in counts:
            print(
                f"bench-workers: run {i + 1}/{args.repeats}: {k} worker(s), {k * args.calls} calls",
                file=sys.stderr,
            )
            row.append(await one_k(args, k))
        reference = row[0]["server_cpu_per_call_minute"]
        for record in row:
            ours = record["server_cpu_per_call_minute"]
            record["cpu_ratio_vs_first"] = (
                round(ours / reference, 3) if ours and reference else None
            )
        runs.append(row)
    summary = {}
    for j, k in enumerate(counts):
        for key in ("server_cpu_per_call_minute", "cpu_ratio_vs_first", "calls_per_core_estimate"):
            values = [r[j][key] for r in runs if r[j][key] is not None]
            summary[f"{key}@{k}"] = (
                {"min": min(values), "median": statistics.median(values), "max": max(values)}
                if values
                else None
            )
    return {
        "platform": "twilio",
        "workers": counts,
        "calls_per_worker": args.calls,
        "duration_s": args.duration,
        "repeats": args.repeats,
        "runs": runs,
        "summary": summary,
        "ok": all(r["ok"] for row in runs for r in row),
    }


def rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for i, row in enumerate(result["runs"]):
        out.append(("run", f"{i + 1} of {len(result['runs'])}"))
        for r in row:
            out.append(
                (
                    f"  {r['workers']} worker(s)",
                    f"{r['calls_completed']}/{r['calls']} calls, frames lost "
                    f"{fmt(r['frames_lost'])}, {fmt(r['server_cpu_per_call_minute'])} "
                    f"CPU-s per call-minute (ratio {fmt(r['cpu_ratio_vs_first'])}), server "
                    f"{fmt(r['server_cpu_utilisation'])} cores, sender "
                    f"{fmt(r['sender_cpu_utilisation'])} cores",
                )
            )
    out.append(("", f"min / median / max over {len(result['runs'])} runs"))
    for key, d in result["summary"].items():
        out.append((key.replace("_", " "), " / ".join(f"{d[k]:.3g}" for k in d) if d else "-"))
    out.append(("result", "OK" if result["ok"] else "FAILED"))
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/workers.py",
        description="CPU per call-minute of ivr serve --workers K against K = the first count, "
        "with K x --calls Twilio calls each (make bench-workers).",
    )
    add_loadtest_arguments(p)
    p.add_argument("--workers", default="1,2", help="worker counts, comma-separated (default 1,2)")
    p.add_argument("--repeats", type=int, default=3, help="runs of every count (default 3)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        counts = parse_counts(args.workers)
        if args.platform != "twilio":
            raise ValueError("--platform: only twilio (Asterisk workers each need a PBX route)")
        if args.repeats < 1:
            raise ValueError("--repeats must be at least 1")
        args.url = "http://127.0.0.1:1"  # replaced by each service's; checked for the rest
        options_from_args(args).check()
        result = asyncio.run(bench(args, counts))
    except ValueError as exc:
        print(f"bench/workers.py: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(aligned(rows(result)))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
