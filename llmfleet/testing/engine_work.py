"""How many tokens a real vLLM engine generated while a test ran something: for the tests that a
client cancel or a deadline stops the engine's work, not only the client's stream.

Such a test starts a long request, ends it early through llmfleet, and checks that vLLM's count
of generated tokens, read once the engine is idle again, grew by less than the request's length.
Reading the count once the engine is idle, rather than polling vLLM's running gauge for a moment
when the request shows, leaves nothing to race: a request the stop never reached runs to its
length before the engine is idle, and is counted whole.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from llmfleet.core.clock import wait_for_condition
from llmfleet.engine.client import EngineClient
from llmfleet.engine.errors import EngineTimeout


async def generated_when_idle(engine_url: str, timeout_s: float = 60.0) -> float:
    """vLLM's count of generated tokens, read once it runs and queues nothing.

    A scrape that times out (the engine busy on a shared machine) is a "not yet"."""
    seen: list[float] = []
    async with EngineClient(engine_url) as client:

        async def idle() -> bool:
            try:
                load = await client.load()
            except EngineTimeout:
                return False
            if load.running or load.waiting:
                return False
            seen.append(load.generation_tokens)
            return True

        await wait_for_condition(idle, timeout_s, what="vLLM running and queueing nothing")
    return seen[-1]


async def generated_during(engine_url: str, run: Callable[[], Awaitable[None]]) -> int:
    """The tokens vLLM generated for what `run` sent it, counted from idle to idle."""
    before = await generated_when_idle(engine_url)
    await run()
    return int(await generated_when_idle(engine_url) - before)
