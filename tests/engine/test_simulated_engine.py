"""The simulated engine behaves like vLLM where the data plane depends on it."""

from __future__ import annotations

import asyncio

import pytest

from llmfleet.core.clock import FakeClock, wait_for_condition
from llmfleet.engine.errors import EngineRequestError, EngineUnavailable
from llmfleet.engine.simulated import SimulatedEngineClient, SimulatedEngineConfig


async def test_exact_continuation_matches_one_unsliced_request() -> None:
    async with SimulatedEngineClient(SimulatedEngineConfig(step_base_s=0.0, step_per_seq_s=0.0)) as engine:
        whole = await engine.complete([5, 6, 7], 40)
        history = [5, 6, 7]
        sliced: list[int] = []
        while len(sliced) < 40:
            part = await engine.complete(history + sliced, 16 if 40 - len(sliced) > 16 else 40 - len(sliced))
            sliced.extend(part.token_ids)
        assert tuple(sliced) == whole.token_ids
        assert len(whole.token_ids) == 40


async def test_slots_bound_running_and_the_rest_wait() -> None:
    clock = FakeClock()
    engine = SimulatedEngineClient(SimulatedEngineConfig(max_num_seqs=2), clock=clock)
    tasks = [asyncio.create_task(engine.complete([9, i], 5)) for i in range(5)]
    await wait_for_condition(lambda: clock.pending_sleepers > 0, timeout=5)
    load = await engine.load()
    assert (load.running, load.waiting) == (2, 3)
    while not all(t.done() for t in tasks):
        clock.advance(1.0)
        await asyncio.sleep(0)
    assert all(len(t.result().token_ids) == 5 for t in tasks)
    await engine.aclose()


async def test_priority_scheduling_serves_lower_value_first() -> None:
    clock = FakeClock()
    engine = SimulatedEngineClient(SimulatedEngineConfig(max_num_seqs=1, priority_scheduling=True), clock=clock)
    order: list[str] = []

    async def run(name: str, priority: int) -> None:
        await engine.complete([1, 2], 2, priority=priority)
        order.append(name)

    blocker = asyncio.create_task(run("blocker", 0))
    await wait_for_condition(lambda: clock.pending_sleepers > 0, timeout=5)
    low = asyncio.create_task(run("low", 10))
    high = asyncio.create_task(run("high", -10))
    await asyncio.sleep(0)
    while not all(t.done() for t in (blocker, low, high)):
        clock.advance(1.0)
        await asyncio.sleep(0)
    assert order == ["blocker", "high", "low"]
    await engine.aclose()


async def test_killed_engine_fails_streams_and_refuses_calls() -> None:
    clock = FakeClock()
    engine = SimulatedEngineClient(clock=clock)
    task = asyncio.create_task(engine.complete([1], 100))
    await wait_for_condition(lambda: clock.pending_sleepers > 0, timeout=5)
    engine.kill()
    with pytest.raises(EngineUnavailable):
        await task
    assert not await engine.health()
    with pytest.raises(EngineUnavailable):
        await engine.load()


async def test_prompt_longer_than_context_is_rejected() -> None:
    async with SimulatedEngineClient(SimulatedEngineConfig(max_model_len=8)) as engine:
        with pytest.raises(EngineRequestError, match="maximum context length"):
            await engine.complete(list(range(10)), 1)


def _histogram(engine: SimulatedEngineClient, name: str) -> tuple[float, float]:
    """(sum, count) of a vLLM-named histogram on the engine's registry."""
    labels = {"model_name": engine.config.name}
    return (
        engine.registry.get_sample_value(f"{name}_sum", labels) or 0.0,
        engine.registry.get_sample_value(f"{name}_count", labels) or 0.0,
    )


async def test_vllms_request_histograms_time_each_request_as_vllm_does() -> None:
    """One slot, steps of exactly 1 s: the second request waits 3 steps behind the first, so its
    TTFT is 4 s; each request's decode time is its last token less its first, its prefill time is
    its first token less its batching, and the gaps between its tokens are the inter-token
    latencies (`llmfleet sim calibrate --fleet` reads these)."""
    clock = FakeClock()
    config = SimulatedEngineConfig(max_num_seqs=1, step_base_s=1.0, step_per_seq_s=0.0, prefill_per_token_s=0.0)
    engine = SimulatedEngineClient(config, clock=clock)
    tasks = [asyncio.create_task(engine.complete([9, i], 3, ignore_eos=True)) for i in range(2)]
    await wait_for_condition(lambda: clock.pending_sleepers > 0, timeout=5)
    while not all(t.done() for t in tasks):
        clock.advance(1.0)
        await asyncio.sleep(0)
    assert _histogram(engine, "vllm:time_to_first_token_seconds") == (1.0 + 4.0, 2)
    assert _histogram(engine, "vllm:request_decode_time_seconds") == (2.0 + 2.0, 2)
    assert _histogram(engine, "vllm:inter_token_latency_seconds") == (4 * 1.0, 4)
    # Prefill time leaves the wait for the slot out: each request's first token is one step
    # after it was batched, the second's wait behind the first included in its TTFT only.
    assert _histogram(engine, "vllm:request_prefill_time_seconds") == (1.0 + 1.0, 2)
    await engine.aclose()
