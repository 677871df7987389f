"""Simulator invariants on random workloads, for every policy (hypothesis).

* every request completes exactly once;
* its generated tokens sum to its output length (across all its slices);
* KV capacity is never exceeded (engine invariants checked after every event);
* time never runs backwards.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmfleet.core.noise_predictor import NoisyOraclePredictor
from llmfleet.policies.registry import make_policy, policy_names
from llmfleet.sim.costmodel import fit_splitwise, linear_cost_model
from llmfleet.sim.instance import EngineConfig
from llmfleet.sim.simulator import SimConfig, Simulator
from llmfleet.sim.traces import TraceRequest

COST = fit_splitwise()


@st.composite
def workloads(draw):
    n = draw(st.integers(1, 18))
    t = 0.0
    trace = []
    shared = draw(st.booleans())
    for i in range(n):
        t += draw(st.floats(0.0, 2.0))
        prompt = draw(st.integers(1, 1500))
        hashes = tuple(range(prompt // 512 + 1)) if shared else ()
        trace.append(TraceRequest(f"r{i}", t, prompt, draw(st.integers(1, 300)), hashes))
    return trace


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    trace=workloads(),
    policy=st.sampled_from(policy_names()),
    instances=st.integers(1, 3),
    kv_tokens=st.sampled_from([2048, 4096, 1 << 20]),
    max_running=st.integers(1, 6),
    slice_tokens=st.sampled_from([8, 64, 512]),
    linear=st.booleans(),
)
def test_invariants_hold_on_random_workloads(
    trace, policy, instances, kv_tokens, max_running, slice_tokens, linear
):
    cost = linear_cost_model(1e-4, 0.02, 1e-3) if linear else COST
    cfg = SimConfig(
        instances=instances,
        engine=EngineConfig(
            max_running=max_running, token_budget=512, kv_capacity_tokens=kv_tokens, prefix_block_tokens=512
        ),
        check_invariants=True,
    )
    times: list[float] = []
    tokens_seen: dict[str, int] = {}
    finished: list[str] = []

    def observe(t, req, what):
        times.append(t)
        if what == "finished":
            finished.append(req.rid)
        if what in ("slice", "finished", "preempted"):
            assert req.generated >= tokens_seen.get(req.rid, 0), "tokens never go backwards"
            tokens_seen[req.rid] = req.generated

    predictor = NoisyOraclePredictor.fitted([r.output_tokens for r in trace], tau=0.5)
    result = Simulator(trace, make_policy(policy, slice_tokens=slice_tokens), cost, cfg, predictor=predictor, observer=observe).run()

    assert sorted(finished) == sorted(r.request_id for r in trace)  # each completes exactly once
    by_id = {r.request_id: r for r in result.records}
    assert len(by_id) == len(trace) == len(result.records)
    for tr in trace:
        rec = by_id[tr.request_id]
        assert rec.generated_tokens == tr.output_tokens
        assert tokens_seen[tr.request_id] == tr.output_tokens
        assert tr.arrival_s <= rec.first_token_s <= rec.finish_s
    assert times == sorted(times)
    assert result.policy_errors == 0
    assert all(b >= 0 for b in result.busy_s)
