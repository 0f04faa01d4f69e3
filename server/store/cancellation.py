"""A guard for cancellations that redis-py can lose on Python 3.11.

redis-py writes commands under `asyncio.wait_for`, which on Python 3.11 returns the
inner result when the write finishes in the same loop iteration as a cancel of the
calling task, and so drops the CancelledError (CPython gh-86296, fixed in 3.12). A loop
that keeps going after such a call would never stop: long-lived loops call
`reraise_lost_cancellation()` after their Redis calls.
"""

from __future__ import annotations

import asyncio


def reraise_lost_cancellation() -> None:
    """Raise CancelledError if the current task was asked to cancel and is still running."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
