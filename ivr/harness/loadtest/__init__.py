"""``ivr loadtest``: many simulated calls at once, and what they cost the service.

``core`` is what both platforms share (the run itself, options, the real-time ticker, CPU cost,
the report and its verdict); ``twilio`` and ``asterisk`` are the two drivers (one call and its
media, and the platform's own metrics); this module runs either. ``ivr.cli.loadtest`` is the
command line (``--platform twilio|asterisk``); ``bench/calls.py`` (``make bench-calls``) puts
the same load on a bare reference server for the service's cost ratio.
"""

from __future__ import annotations

from typing import Any

from ivr.harness.loadtest.asterisk import AsteriskDriver
from ivr.harness.loadtest.asterisk import AsteriskLoadtestOptions as AsteriskLoadtestOptions
from ivr.harness.loadtest.core import Driver, Options, run
from ivr.harness.loadtest.twilio import LoadtestOptions as LoadtestOptions
from ivr.harness.loadtest.twilio import TwilioDriver

DRIVERS: dict[str, type[Driver[Any]]] = {d.platform: d for d in (TwilioDriver, AsteriskDriver)}


async def run_loadtest(options: Options) -> dict[str, Any]:
    """Run the load test of the options' platform; the report as a dict. Raises ValueError for
    bad options and SetupError if the fake Asterisk cannot listen."""
    return await run(next(d for d in DRIVERS.values() if type(options) is d.options_type), options)


def format_report(report: dict[str, Any]) -> str:
    return DRIVERS[report["platform"]].format(report)
