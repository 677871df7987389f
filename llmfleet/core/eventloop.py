"""The event loop a server process runs on: uvloop by default, plain asyncio on request.

uvloop is the default, as uvicorn makes it: it cut the dispatcher's CPU time per slice
assignment by about 11% (bench/DATAPLANE.md, section 6). Imported by the CLIs before anything
heavy, so `--help` stays fast.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

EVENT_LOOPS = ("uvloop", "asyncio")


def run_server(main: Callable[[], Coroutine[Any, Any, None]], event_loop: str = "uvloop") -> None:
    """Run a server process's main coroutine to its end on `event_loop` (one of EVENT_LOOPS)."""
    if event_loop == "uvloop":
        import uvloop

        uvloop.run(main())
    elif event_loop == "asyncio":
        asyncio.run(main())
    else:
        raise ValueError(f"event loop must be one of {', '.join(EVENT_LOOPS)}, not {event_loop!r}")
