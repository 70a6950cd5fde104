"""The outcome classes a request is counted under, shared by agents and coordinator.

They travel as the keys of `Series.outcomes`, so both sides must agree on them:
the agent decides a request's class and whether its latency is recorded (only
a reply with a status has a response time), the coordinator sums the errors
and tells a run in which nothing replied.
"""

from __future__ import annotations

# In report order. "dropped" is decided by the scheduler (an arrival that could
# not start), never by an engine; "cancelled" is a request that was sent but
# abandoned when the run was stopped (the target may have seen it, so it is
# counted, though it is nobody's error).
OUTCOMES: tuple[str, ...] = (
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "timeout",
    "connect_error",
    "error",
    "cancelled",
    "dropped",
)
# The target answered with a status: a latency to record, a reply to judge.
REPLY_OUTCOMES: tuple[str, ...] = ("2xx", "3xx", "4xx", "5xx")
ERROR_OUTCOMES: tuple[str, ...] = ("4xx", "5xx", "timeout", "connect_error", "error")
