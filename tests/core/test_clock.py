"""The fake clock's timers fire only when time is advanced past them, in order, and never once cancelled."""

from __future__ import annotations

import asyncio

from llmfleet.core.clock import FakeClock, RealClock


async def test_fake_timers_fire_in_deadline_order_when_advanced_and_not_when_cancelled() -> None:
    clock = FakeClock()
    fired: list[str] = []
    clock.call_later(2.0, lambda: fired.append("b"))
    clock.call_later(1.0, lambda: fired.append("a"))
    cancelled = clock.call_later(1.5, lambda: fired.append("never"))
    assert clock.pending_sleepers == 3
    cancelled.cancel()
    clock.advance(0.9)
    await asyncio.sleep(0)
    assert fired == []
    clock.advance(1.2)
    await asyncio.sleep(0)  # done-callbacks run on the loop
    assert fired == ["a", "b"] and clock.pending_sleepers == 0


async def test_real_timers_fire_and_cancel() -> None:
    clock = RealClock()
    fired = asyncio.Event()
    clock.call_later(0.0, fired.set)
    never = clock.call_later(0.0, lambda: (_ for _ in ()).throw(AssertionError("cancelled timer ran")))
    never.cancel()
    await asyncio.wait_for(fired.wait(), 5)
    await asyncio.sleep(0.01)
