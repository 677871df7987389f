"""The data plane in the simulator: a slice takes `dispatch_delay_s` to reach its engine, counts
against its pod on the way, and the client reads the first and last tokens a relay later."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmfleet.core.scheduling import Assignment, Preempt, SchedulerView
from llmfleet.policies.registry import make_policy
from llmfleet.policies.routing import open_slots
from llmfleet.sim.costmodel import linear_cost_model
from llmfleet.sim.instance import EngineConfig
from llmfleet.sim.simulator import SimConfig, Simulator
from llmfleet.sim.traces import TraceRequest

BARE = linear_cost_model(0.001, 0.01)


def _records(trace, cost, policy=None, instances=1, max_running=8):
    cfg = SimConfig(instances=instances, engine=EngineConfig(max_running=max_running), check_invariants=True)
    sim = Simulator(trace, policy or make_policy("fcfs-rr"), cost, cfg)
    result = sim.run()
    return {r.request_id: r for r in result.records}, result


def test_delays_shift_a_lone_request_by_exactly_their_sum() -> None:
    trace = [TraceRequest("r0", 0.0, 100, 20)]
    bare = _records(trace, BARE)[0]["r0"]
    cost = replace(BARE, dispatch_delay_s=0.3, first_token_relay_s=0.05, finish_relay_s=0.2)
    got = _records(trace, cost)[0]["r0"]
    assert got.ttft_s == pytest.approx(bare.ttft_s + 0.3 + 0.05)
    assert got.latency_s == pytest.approx(bare.latency_s + 0.3 + 0.2)
    assert got.generated_tokens == 20


class FirstOpenPod:
    """Assigns each queued request to the first pod with an open slot, and keeps the views."""

    name = "first-open"

    def __init__(self) -> None:
        self.views: list[SchedulerView] = []

    def decide(self, view: SchedulerView):
        self.views.append(view)
        taken: dict[str, int] = {}
        out = []
        for r in view.queue:
            for pod in view.pods:
                if open_slots(pod) - taken.get(pod.pod_id, 0) > 0:
                    taken[pod.pod_id] = taken.get(pod.pod_id, 0) + 1
                    out.append(Assignment(r.request_id, pod.pod_id))
                    break
        return tuple(out)


def test_a_slice_on_its_way_counts_against_its_pod() -> None:
    # One slot per pod; r1 arrives while r0 is still on its way to pod-0.
    trace = [TraceRequest("r0", 0.0, 10, 50), TraceRequest("r1", 0.5, 10, 50)]
    policy = FirstOpenPod()
    cost = replace(BARE, dispatch_delay_s=1.0)
    records, result = _records(trace, cost, policy, instances=2, max_running=1)
    at_r1 = next(v for v in policy.views if v.now == 0.5)
    pod0 = next(p for p in at_r1.pods if p.pod_id == "pod-0")
    assert pod0.running + pod0.waiting == 1  # the dispatcher counts it; the engine has not seen it
    assert result.policy_errors == 0
    # So r1 went to the other pod and neither waited for the other.
    assert records["r1"].ttft_s == pytest.approx(records["r0"].ttft_s)


class PreemptOnArrival:
    """Sends r0 to pod-0; when r1 arrives, takes r0 back (still on its way) and sends r1 there."""

    name = "preempt-on-arrival"

    def decide(self, view: SchedulerView):
        queued = {r.request_id for r in view.queue}
        running = {r.request_id for r in view.running}
        if view.now == 0.0 and "r0" in queued:
            return (Assignment("r0", "pod-0"),)
        if "r1" in queued and "r0" in running:
            return (Preempt("r0", "pod-0"), Assignment("r1", "pod-0"))
        if "r0" in queued and "r1" not in queued:
            return (Assignment("r0", "pod-0"),)
        return ()


def test_a_slice_taken_back_on_its_way_never_reaches_the_engine() -> None:
    trace = [TraceRequest("r0", 0.0, 10, 5), TraceRequest("r1", 0.2, 10, 5)]
    records, result = _records(trace, replace(BARE, dispatch_delay_s=1.0), PreemptOnArrival(), max_running=1)
    assert result.policy_errors == 0 and result.engine_preemptions == 0
    assert records["r0"].preemptions == 1 and records["r0"].generated_tokens == 5
    # r1 was sent at 0.2 and reached the engine at 1.2; r0 went again after r1 left.
    assert records["r1"].first_token_s < records["r0"].first_token_s
    assert records["r1"].first_token_s == pytest.approx(1.2 + BARE.prefill_s(10), abs=0.02)


@pytest.mark.parametrize(
    ("policy", "waits_for_the_notice"),
    [
        (FirstOpenPod, True),  # a queue held at the dispatcher refills the slot once it hears of the end
        (lambda: make_policy("fcfs-rr"), False),  # the engine's own queue refills it at once
    ],
)
def test_the_dispatcher_frees_a_slot_when_the_slices_end_reaches_it(policy, waits_for_the_notice) -> None:
    # One slot; r1 arrives while r0 runs, so it starts when r0's slot is freed.
    trace = [TraceRequest("r0", 0.0, 10, 20), TraceRequest("r1", 0.1, 10, 20)]
    bare, _ = _records(trace, BARE, policy(), max_running=1)
    noticed, result = _records(trace, replace(BARE, end_notice_s=0.5), policy(), max_running=1)
    assert result.policy_errors == 0
    assert noticed["r0"].latency_s == pytest.approx(bare["r0"].latency_s)  # the client's view of r0 is unchanged
    shift = noticed["r1"].first_token_s - bare["r1"].first_token_s
    assert shift == pytest.approx(0.5 if waits_for_the_notice else 0.0, abs=1e-6)
