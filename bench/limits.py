"""What every load process of the bench does first: raise its file-descriptor limit
(thousands of sockets per process; the bench reports how far that got), and run its
event loop on uvloop when it is installed."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable, Coroutine
from typing import Any


def raise_fd_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; the (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        target = 1 << 20
    else:
        target = hard
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def run_fast(main: Coroutine[Any, Any, None]) -> None:
    """`asyncio.run(main)` on uvloop when installed, with the fd limit raised first."""
    raise_fd_limit()
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main)
