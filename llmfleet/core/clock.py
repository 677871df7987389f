"""The one clock abstraction: all time in llmfleet goes through a `Clock`.

Production code takes a clock argument; tests pass a `FakeClock` and advance it explicitly,
so no test ever sleeps to wait for time to pass.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> object: ...


class Clock(Protocol):
    """Monotonic seconds, an awaitable sleep, and a callback after a delay (cheaper than a task
    that sleeps, for a timer most of which are cancelled, such as a request's deadline)."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer: ...


class RealClock:
    """Wall-clock time from `time.monotonic`."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, seconds), callback)


class FakeClock:
    """A clock that only moves when a test calls `advance`.

    Sleepers are woken in deadline order as `advance` passes their deadlines, so code under
    test that awaits `clock.sleep(...)` runs deterministically.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """`callback` runs when `advance` passes now + seconds, unless the timer is cancelled."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: None if f.cancelled() else callback())
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._seq), fut))
        return fut

    def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError("a clock never runs backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    @property
    def pending_sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())


async def wait_for_condition(predicate, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    """Poll `predicate` until it is true or `timeout` wall seconds pass (for tests and startup probes)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_for_condition_sync(predicate, timeout: float, what: str = "condition", interval: float = 0.05) -> None:
    """`wait_for_condition` for code outside an event loop (fixtures, CLIs): poll with a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)
