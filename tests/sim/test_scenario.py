"""A hand-computable scenario: one engine, a linear cost model, latencies derived by hand.

Cost model: prefill costs A seconds per token, every decode step costs D seconds whatever the
batch, and a mixed iteration costs the sum (no overlap). The engine admits everything at
once (large budget and KV), so each expected time below is plain arithmetic.
"""

from __future__ import annotations

import pytest

from llmfleet.policies.registry import make_policy
from llmfleet.sim.costmodel import linear_cost_model
from llmfleet.sim.instance import EngineConfig
from llmfleet.sim.simulator import SimConfig, Simulator
from llmfleet.sim.traces import TraceRequest

A = 0.001  # s per prefill token
D = 0.01  # s per decode step


def _run(trace: list[TraceRequest], policy: str = "fcfs-rr", **settings):
    cfg = SimConfig(
        instances=1,
        engine=EngineConfig(max_running=8, token_budget=100_000, kv_capacity_tokens=1 << 20),
    )
    result = Simulator(trace, make_policy(policy, **settings), linear_cost_model(A, D), cfg).run()
    return {r.request_id: r for r in result.records}, result


def test_three_requests_sharing_one_engine() -> None:
    trace = [
        TraceRequest("a", 0.0, prompt_tokens=100, output_tokens=3),
        TraceRequest("b", 0.0, prompt_tokens=50, output_tokens=2),
        TraceRequest("c", 0.155, prompt_tokens=20, output_tokens=1),
    ]
    recs, result = _run(trace)
    # t=0: one prefill iteration of 150 tokens; both emit their first token at 0.15.
    t1 = (100 + 50) * A
    # one decode step for a and b: b has its 2 tokens.
    t2 = t1 + D
    # c arrived at 0.155 during that step and joins after it: prefill 20 + a's decode step.
    t3 = t2 + 20 * A + D
    assert recs["a"].ttft_s == pytest.approx(t1)
    assert recs["b"].ttft_s == pytest.approx(t1)
    assert recs["b"].latency_s == pytest.approx(t2)
    assert recs["a"].latency_s == pytest.approx(t3)
    assert recs["c"].latency_s == pytest.approx(t3 - 0.155)
    assert recs["c"].ttft_s == pytest.approx(t3 - 0.155)
    assert result.busy_s == [pytest.approx(t3)]


def test_a_long_decode_run_is_cut_at_the_next_step_boundary() -> None:
    trace = [
        TraceRequest("long", 0.0, prompt_tokens=100, output_tokens=50),
        TraceRequest("short", 0.3051, prompt_tokens=10, output_tokens=1),
    ]
    recs, _ = _run(trace)
    prefill_end = 100 * A  # first token of "long"
    steps_before = 21  # step boundaries at 0.1 + 0.01 j; the first one after 0.3051 is j = 21
    join = prefill_end + steps_before * D
    short_done = join + 10 * A + D  # mixed iteration: short's prefill plus long's decode step
    long_left = 50 - 1 - steps_before - 1
    assert recs["short"].latency_s == pytest.approx(short_done - 0.3051)
    assert recs["long"].latency_s == pytest.approx(short_done + long_left * D)
    assert recs["long"].ttft_s == pytest.approx(prefill_end)


def test_slices_requeue_and_resume_from_the_prefix_cache() -> None:
    # One request of 40 tokens in slices of 16 on one engine: prefill 512, then each resume
    # re-prefills only what is not in whole cached blocks (16-token blocks here).
    trace = [TraceRequest("s", 0.0, prompt_tokens=512, output_tokens=40)]
    recs, result = _run(trace, policy="scls", slice_tokens=16)
    r = recs["s"]
    assert r.slices == 2  # 16 + 16 + 8 tokens
    # slice 1: prefill 512 (first token) + 15 steps -> 16 tokens; context 528 = 33 blocks, all cached
    # resume: the last token is always recomputed -> a 16-token block is re-prefilled (16 tokens)
    t = 512 * A + 15 * D
    t += 16 * A + 15 * D  # slice 2: re-prefill one block, emits token 17, then 15 steps
    t += 16 * A + 7 * D  # slice 3: same, 8 tokens
    assert r.latency_s == pytest.approx(t)
    assert result.prefill_tokens == 512 + 16 + 16
    assert result.prefix_hit_tokens == (528 - 16) + (544 - 16)


class _RankedToOnePod:
    """Test policy: sends every queued request to the one pod at once, with a fixed rank each."""

    name = "ranked"

    def __init__(self, ranks: dict[str, int]) -> None:
        self.ranks = ranks

    def decide(self, view):
        from llmfleet.core.scheduling import Assignment

        return tuple(Assignment(r.request_id, view.pods[0].pod_id, rank=self.ranks[r.request_id]) for r in view.queue)


def test_requests_waiting_inside_the_engine_start_in_rank_order() -> None:
    """The engine's queue is vLLM's priority queue: lower rank first, arrival order among equals."""
    trace = [
        TraceRequest("blocker", 0.0, prompt_tokens=10, output_tokens=5),
        TraceRequest("late-rank", 0.001, prompt_tokens=10, output_tokens=1),
        TraceRequest("tie-first", 0.002, prompt_tokens=10, output_tokens=1),
        TraceRequest("early-rank", 0.003, prompt_tokens=10, output_tokens=1),
        TraceRequest("tie-second", 0.004, prompt_tokens=10, output_tokens=1),
    ]
    ranks = {"blocker": 0, "late-rank": 9, "tie-first": 3, "early-rank": 1, "tie-second": 3}
    cfg = SimConfig(instances=1, engine=EngineConfig(max_running=1, token_budget=100_000, kv_capacity_tokens=1 << 20))
    result = Simulator(trace, _RankedToOnePod(ranks), linear_cost_model(A, D), cfg).run()
    order = [r.request_id for r in sorted(result.records, key=lambda r: r.arrival_s + r.latency_s)]
    assert order == ["blocker", "early-rank", "tie-first", "tie-second", "late-rank"]
