"""A simulated Twilio ("harness") that calls a running service over HTTP and websockets only.

It never imports the service (``ivr.service``, ``ivr.calls``, ``storage``): it sees exactly what
Twilio would see, so it can drive a local ``ivr serve`` or any deployment.
"""

from ivr.harness.twilio_sim import (
    DEMO_AUTH_TOKEN,
    CallOptions,
    CallResult,
    Pacer,
    RealTimePacer,
    TranscriptEntry,
    VirtualPacer,
    simulate_call,
)

__all__ = [
    "DEMO_AUTH_TOKEN",
    "CallOptions",
    "CallResult",
    "Pacer",
    "RealTimePacer",
    "TranscriptEntry",
    "VirtualPacer",
    "simulate_call",
]
