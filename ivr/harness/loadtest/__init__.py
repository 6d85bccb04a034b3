"""``ivr loadtest``: many simulated calls at once, and what they cost the service, measured
against a bare reference run in the same process run.

``core`` is what both platforms share (the run itself, options, the real-time ticker, CPU cost,
the reference run, the report and its verdict); ``twilio`` and ``asterisk`` are the two drivers
(one call and its media, and the platform's own metrics); ``cli`` is the command line.
"""

from ivr.harness.loadtest.asterisk import AsteriskLoadtestOptions, run_asterisk_loadtest
from ivr.harness.loadtest.cli import (
    add_loadtest_parser,
    asterisk_options_from_args,
    options_from_args,
    run_loadtest_cli,
)
from ivr.harness.loadtest.twilio import LoadtestOptions, format_report, run_loadtest

__all__ = [
    "AsteriskLoadtestOptions",
    "LoadtestOptions",
    "add_loadtest_parser",
    "asterisk_options_from_args",
    "format_report",
    "options_from_args",
    "run_asterisk_loadtest",
    "run_loadtest",
    "run_loadtest_cli",
]
