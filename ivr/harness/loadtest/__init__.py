"""``ivr loadtest``: many simulated calls at once, and what they cost the service.

``core`` is what both platforms share (the run itself, options, the real-time ticker, CPU cost,
the report and its verdict); ``twilio`` and ``asterisk`` are the two drivers (one call and its
media, and the platform's own metrics); ``cli`` is the command line. ``bench/calls.py`` (``make
bench-calls``) puts the same load on a bare reference server for the service's cost ratio.
"""

from ivr.harness.loadtest.asterisk import AsteriskDriver, AsteriskLoadtestOptions
from ivr.harness.loadtest.cli import (
    DRIVERS,
    add_loadtest_arguments,
    add_loadtest_parser,
    format_report,
    options_from_args,
    run_loadtest,
    run_loadtest_cli,
)
from ivr.harness.loadtest.twilio import LoadtestOptions, TwilioDriver

__all__ = [
    "DRIVERS",
    "AsteriskDriver",
    "AsteriskLoadtestOptions",
    "LoadtestOptions",
    "TwilioDriver",
    "add_loadtest_arguments",
    "add_loadtest_parser",
    "format_report",
    "options_from_args",
    "run_loadtest",
    "run_loadtest_cli",
]
