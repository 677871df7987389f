"""The dispatcher against fake sidecars: streaming in slices, policies, failover, bad engines."""

from __future__ import annotations

import grpc
import pytest

from llmfleet.client import DispatcherClient
from llmfleet.core.config import SchedulingConfig
from llmfleet.core.scheduling import MAX_RANK
from llmfleet.dispatcher import serve_dispatcher
from llmfleet.dispatcher.pods import slice_seed
from llmfleet.dispatcher.slices import engine_priority
from tests.dispatcher.fake_sidecar import reference

PROMPT = [11, 12, 13, 14, 15]


async def _fleet(pods, **config):
    handle = await serve_dispatcher(
        pods={f"pod-{i}": p.address for i, p in enumerate(pods)}, config=SchedulingConfig(**config)
    )
    await handle.wait_ready(len(pods), timeout_s=10)
    return handle


@pytest.mark.parametrize("policy", ["fcfs-rr", "least-load", "scls", "sls", "llmfleet", "ltr", "alise"])
async def test_every_policy_streams_exact_tokens(fake_pods, policy):
    handle = await _fleet(fake_pods, policy=policy, slice_tokens=8)
    try:
        async with DispatcherClient(handle.address) as c:
            results = [await c.generate(prompt_ids=PROMPT, max_tokens=30, ignore_eos=True, timeout=20) for _ in range(3)]
        for g in results:
            assert g.token_ids == reference(PROMPT, 30)
            assert g.finish_reason == "length"
            assert g.usage.completion_tokens == 30
            if policy == "scls":
                assert g.usage.slices == 4  # 8 + 8 + 8 + 6
            if policy == "fcfs-rr":
                assert g.usage.slices == 1
        stats = await DispatcherClient(handle.address).stats()
        assert stats.policy == policy and stats.completed == 3
    finally:
        await handle.stop()


@pytest.mark.parametrize(
    "faults, expect_failovers",
    [
        (dict(break_after_tokens=3, break_times=2), 2),  # the call breaks mid-slice
        (dict(error_times=2), 2),  # the engine answers 500 after one token
        (dict(malformed_times=1), 0),  # the engine streams one token too many: cut to the slice
    ],
)
async def test_failures_resume_without_lost_or_duplicated_tokens(fake_pods, faults, expect_failovers):
    from llmfleet.dispatcher import DispatcherSettings
    from tests.dispatcher.fake_sidecar import Faults

    # One faulty pod, so every retry lands on it again after a short cool-down: exact counts.
    fake_pods[0].servicer.faults = Faults(**faults)
    handle = await serve_dispatcher(
        pods={"pod-0": fake_pods[0].address},
        config=SchedulingConfig(policy="scls", slice_tokens=8),
        settings=DispatcherSettings(pod_cooldown_s=0.05),
    )
    await handle.wait_ready(1, timeout_s=10)
    try:
        async with DispatcherClient(handle.address) as c:
            g = await c.generate(prompt_ids=PROMPT, max_tokens=40, ignore_eos=True, timeout=20)
            assert g.token_ids == reference(PROMPT, 40)
            total = g.usage.failovers
            for _ in range(3):  # later requests also land on the faulty pod
                g2 = await c.generate(prompt_ids=PROMPT, max_tokens=20, ignore_eos=True, timeout=20)
                assert g2.token_ids == reference(PROMPT, 20)
                total += g2.usage.failovers
        assert total == expect_failovers
        assert handle.dispatcher.failovers == expect_failovers
    finally:
        await handle.stop()


async def test_pod_killed_mid_stream_fails_over(fake_pods):
    fake_pods[0].servicer.token_delay_s = 0.01
    fake_pods[1].servicer.token_delay_s = 0.01
    handle = await _fleet(fake_pods, policy="fcfs-rr")
    try:
        async with DispatcherClient(handle.address) as c:
            import asyncio

            tasks = [asyncio.create_task(c.generate(prompt_ids=PROMPT, max_tokens=60, ignore_eos=True, timeout=30)) for _ in range(4)]
            from llmfleet.core.clock import wait_for_condition

            await wait_for_condition(lambda: fake_pods[0].servicer.active > 0 and fake_pods[1].servicer.active > 0, 10)
            await fake_pods[0].stop()
            results = await asyncio.gather(*tasks)
        for g in results:
            assert g.token_ids == reference(PROMPT, 60)
        assert sum(g.usage.failovers for g in results) >= 1
    finally:
        await handle.stop()


async def test_eos_ends_the_request_with_stop(fake_pods):
    for p in fake_pods:
        p.servicer.faults.eos_at = 13
    handle = await _fleet(fake_pods, policy="scls", slice_tokens=5)
    try:
        async with DispatcherClient(handle.address) as c:
            g = await c.generate(prompt_ids=PROMPT, max_tokens=40, timeout=20)
        assert g.finish_reason == "stop"
        assert g.token_ids == reference(PROMPT, 13)
    finally:
        await handle.stop()


async def test_engine_rejection_is_a_clear_invalid_argument(fake_pods):
    for p in fake_pods:
        p.servicer.faults.client_error = "HTTP 400: bad stop sequence"
    handle = await _fleet(fake_pods, policy="fcfs-rr")
    try:
        async with DispatcherClient(handle.address) as c:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.generate(prompt_ids=PROMPT, max_tokens=5, timeout=20)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "bad stop sequence" in err.value.details()
    finally:
        await handle.stop()


async def test_all_pods_failing_gives_up_with_unavailable(fake_pods):
    from llmfleet.dispatcher import DispatcherSettings
    from tests.dispatcher.fake_sidecar import Faults

    for p in fake_pods:
        p.servicer.faults = Faults(error_times=100)
    handle = await serve_dispatcher(
        pods={f"pod-{i}": p.address for i, p in enumerate(fake_pods)},
        config=SchedulingConfig(policy="fcfs-rr"),
        settings=DispatcherSettings(max_failures=2, pod_cooldown_s=0.01),
    )
    try:
        await handle.wait_ready(2, timeout_s=10)
        async with DispatcherClient(handle.address) as c:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.generate(prompt_ids=PROMPT, max_tokens=5, timeout=20)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "gave up after 3 failed attempts" in err.value.details()
    finally:
        await handle.stop()


async def test_draining_pod_refuses_and_request_runs_elsewhere(fake_pods):
    fake_pods[0].servicer.faults.draining = True  # refuses slices but reports itself healthy for a moment
    handle = await _fleet([fake_pods[1]], policy="fcfs-rr")
    try:
        await handle.dispatcher.set_pods({"a": fake_pods[0].address, "b": fake_pods[1].address})
        async with DispatcherClient(handle.address) as c:
            for _ in range(4):
                g = await c.generate(prompt_ids=PROMPT, max_tokens=6, ignore_eos=True, timeout=20)
                assert g.token_ids == reference(PROMPT, 6)
                assert g.usage.failovers == 0  # a refusal by a draining pod is not a failure
        assert fake_pods[0].servicer.slices == 0
    finally:
        await handle.stop()


async def test_priority_reaches_the_engine_inverted(fake_pods):
    handle = await _fleet(fake_pods[:1], policy="fcfs-rr")
    try:
        async with DispatcherClient(handle.address) as c:
            await c.generate(prompt_ids=PROMPT, max_tokens=2, priority=5, timeout=20)
            await c.generate(prompt_ids=PROMPT, max_tokens=2, timeout=20)
        # vLLM: lower value runs first; fcfs-rr ranks every request 0
        assert fake_pods[0].servicer.priorities == [-5 * (MAX_RANK + 1), 0]
    finally:
        await handle.stop()


async def test_the_policy_rank_reaches_the_engine_as_its_priority(fake_pods):
    """llmfleet's rank (1 + the expected remaining tokens) is the engine queue's order, under the
    client's priority."""
    handle = await _fleet(fake_pods[:1], policy="llmfleet")
    try:
        async with DispatcherClient(handle.address) as c:
            await c.generate(prompt_ids=PROMPT, max_tokens=2, timeout=20)
            await c.generate(prompt_ids=PROMPT, max_tokens=2, priority=1, timeout=20)
        plain, important = fake_pods[0].servicer.priorities
        assert 0 < plain <= MAX_RANK
        assert important == plain - (MAX_RANK + 1)  # the same rank, one client priority level up
    finally:
        await handle.stop()


@pytest.mark.parametrize(
    ("client", "rank", "expected"),
    [
        (0, 0, 0),
        (0, 17, 17),
        (1, 17, 17 - (MAX_RANK + 1)),  # any client priority beats any rank below it
        (-1, 0, MAX_RANK + 1),
        (2**31 - 1, 5, -(2**31 - 1)),  # clamped to vLLM's 32 bits
        (-(2**31 - 1), MAX_RANK, 2**31 - 1),
    ],
)
def test_engine_priority_orders_by_client_priority_then_rank(client, rank, expected):
    assert engine_priority(client, rank) == expected


async def test_sampling_reaches_each_slice_with_min_tokens_counted_down(fake_pods):
    handle = await _fleet(fake_pods[:1], policy="scls", slice_tokens=4)
    try:
        async with DispatcherClient(handle.address) as c:
            await c.generate(
                prompt_ids=PROMPT, max_tokens=12, min_tokens=10, logit_bias={2: 100.0}, temperature=0.5,
                top_p=0.9, top_k=7, seed=3, stop=["zz"], timeout=20,
            )  # fmt: skip
        sent = fake_pods[0].servicer.samplings
        assert [s.min_tokens for s in sent] == [10, 6, 2]
        # The first slice samples with the request's own seed, later ones with one derived from
        # their position; stop strings stay with the dispatcher (they may straddle slices).
        assert [s.seed for s in sent] == [3, slice_seed(3, 4), slice_seed(3, 8)]
        assert len({s.seed for s in sent}) == 3
        for s in sent:
            assert dict(s.logit_bias) == {2: 100.0} and s.top_k == 7 and list(s.stop) == []
            assert abs(s.temperature - 0.5) < 1e-6 and abs(s.top_p - 0.9) < 1e-6
    finally:
        await handle.stop()
