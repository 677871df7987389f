"""`generated_during` on the real engine counts every token of what ran, even a request still running."""

from __future__ import annotations

import asyncio

import pytest

from llmfleet.engine.client import EngineClient
from llmfleet.testing.engine_work import generated_during

pytestmark = pytest.mark.engine
PROMPT = [11, 22, 33, 44]


async def test_counts_whole_requests(engine):
    async def two() -> None:
        async with EngineClient(engine.url) as client:
            await asyncio.gather(client.complete(PROMPT, 10, ignore_eos=True), client.complete(PROMPT, 7, ignore_eos=True))

    assert await generated_during(engine.url, two) == 17


async def test_counts_a_request_still_running_when_the_caller_returns_whole(engine):
    # What a stop that never reached vLLM looks like: the request runs on after `run` returns.
    async with EngineClient(engine.url, timeout=300) as client:
        stream = client.stream(PROMPT, 300, ignore_eos=True)

        async def leave_it_running() -> None:
            await anext(stream)  # vLLM is generating it; the stream is left open, not closed

        try:
            assert await generated_during(engine.url, leave_it_running) == 300
        finally:
            await stream.aclose()
