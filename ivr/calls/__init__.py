"""The call driver: the life of a call, the same for every platform.

- ``session.CallSession``: a call's consent flow joined to its recording (the vault gate).
- ``registry.CallRegistry`` / ``registry.Call``: the calls in progress; open, look up, finish
  exactly once, expire.
- ``wire.Wire`` / ``wire.carry_out``: what a platform implements, and the one dispatcher of the
  flow's commands to it; ``wire.withdraw_for_caller``: the agent's withdrawal, for every
  platform.
"""

from ivr.calls.registry import Call, CallRegistry
from ivr.calls.session import TRACK_AGENT, TRACK_CALLER, CallSession, flow_policy
from ivr.calls.wire import NotWithdrawable, Wire, Withdrawn, carry_out, withdraw_for_caller

__all__ = [
    "TRACK_AGENT",
    "TRACK_CALLER",
    "Call",
    "CallRegistry",
    "CallSession",
    "NotWithdrawable",
    "Wire",
    "Withdrawn",
    "carry_out",
    "flow_policy",
    "withdraw_for_caller",
]
