"""The mechanism side of the contract: bad decisions are counted, stalls are reported,
predictors are consulted once per request, and any LengthPredictor plugs in."""

from __future__ import annotations

import sys
import types

import pytest

from llmfleet.core.prediction import LengthEstimate
from llmfleet.core.scheduling import Assignment, Preempt, SchedulerView
from llmfleet.policies.registry import make_policy
from llmfleet.sim.costmodel import linear_cost_model
from llmfleet.sim.runner import load_predictor
from llmfleet.sim.simulator import SimConfig, Simulator
from llmfleet.sim.traces import TraceRequest

COST = linear_cost_model(0.001, 0.01)
TRACE = [TraceRequest(f"r{i}", i * 0.5, 100, 5 + i) for i in range(6)]


class Sloppy:
    """Assigns everything twice, to unknown pods, and preempts strangers."""

    name = "sloppy"

    def decide(self, view: SchedulerView):
        out = []
        for r in view.queue:
            out += [
                Assignment(r.request_id, "pod-0"),
                Assignment(r.request_id, "pod-0"),
                Assignment("ghost", "pod-0"),
            ]
            out += [Assignment(r.request_id, "nowhere"), Preempt("ghost", "pod-0")]
        return tuple(out)


class Lazy:
    name = "lazy"

    def decide(self, view: SchedulerView):
        return ()


class CountingPredictor:
    name = "counting"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def predict(self, items):
        self.seen += [i.request_id for i in items]
        assert all(i.prompt_text is None for i in items)  # traces carry no text
        return [
            LengthEstimate(
                float(i.true_output_tokens), float(i.true_output_tokens), 2.0 * i.true_output_tokens
            )
            for i in items
        ]


def test_invalid_decisions_are_counted_not_applied() -> None:
    result = Simulator(TRACE, Sloppy(), COST, SimConfig(instances=1)).run()
    assert len(result.records) == len(TRACE)
    assert result.policy_errors == 4 * len(TRACE)


def test_a_policy_that_never_assigns_is_reported() -> None:
    with pytest.raises(RuntimeError, match="left 6 requests queued"):
        Simulator(TRACE, Lazy(), COST, SimConfig(instances=1)).run()


def test_predictor_is_consulted_once_per_request_and_estimates_reach_policies() -> None:
    pred = CountingPredictor()
    seen_estimates = []

    class Spy:
        name = "spy"

        def decide(self, view):
            seen_estimates.extend(r.estimate.expected_tokens for r in view.queue)
            return make_policy("fcfs-rr").decide(view)

    Simulator(TRACE, Spy(), COST, SimConfig(instances=2), predictor=pred).run()
    assert sorted(pred.seen) == sorted(t.request_id for t in TRACE)
    assert sorted(set(seen_estimates)) == sorted(float(t.output_tokens) for t in TRACE)


def test_ranker_directory_loads_through_llmfleet_ranker(monkeypatch, tmp_path) -> None:
    fake = types.ModuleType("llmfleet.ranker")
    loaded = []

    def load(path):
        loaded.append(path)
        return CountingPredictor()

    fake.load_predictor = load  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llmfleet.ranker", fake)
    pred = load_predictor(str(tmp_path), TRACE, tau=0.5)
    assert isinstance(pred, CountingPredictor) and loaded == [str(tmp_path)]


def test_missing_ranker_package_is_a_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "llmfleet.ranker", None)
    with pytest.raises(RuntimeError, match="load_predictor"):
        load_predictor(str(tmp_path), TRACE, tau=0.5)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SimConfig(instances=0)
    with pytest.raises(ValueError):
        SimConfig(instances=2, pod_groups=("a",))
    with pytest.raises(ValueError, match="empty"):
        Simulator([], make_policy("fcfs-rr"), COST)


def test_kv_too_small_for_one_request_is_explained() -> None:
    from llmfleet.sim.instance import EngineConfig

    cfg = SimConfig(instances=1, engine=EngineConfig(kv_capacity_tokens=64))
    with pytest.raises(RuntimeError, match="KV"):
        Simulator([TraceRequest("big", 0.0, 50, 100)], make_policy("fcfs-rr"), COST, cfg).run()


def test_a_re_estimating_predictor_is_asked_again_at_each_slice_boundary() -> None:
    from llmfleet.core.config import SchedulingConfig

    class Sharpening:
        name = "sharpening"
        reestimates = True

        def __init__(self) -> None:
            self.asked: list[tuple[str, int]] = []

        def predict(self, items):
            self.asked.extend((it.request_id, it.generated_tokens) for it in items)
            return [LengthEstimate(0.0, float(it.true_output_tokens), float(it.true_output_tokens), it.generated_tokens)
                    for it in items]  # fmt: skip

    pred = Sharpening()
    trace = [TraceRequest("long", 0.0, 50, 20)]
    policy = make_policy(SchedulingConfig(policy="llmfleet", slice_tokens=8))
    result = Simulator(trace, policy, COST, SimConfig(instances=1), predictor=pred).run()
    assert len(result.records) == 1
    assert pred.asked == [("long", 0), ("long", 8), ("long", 16)], "admission, then after each of the two full slices"


def test_the_view_counts_admitted_requests_and_numbers_them_below_it() -> None:
    """`admitted` is what the overtake guard counts with: every arrived request, each `seq` below it."""
    seen: list[tuple[float, int, list[int]]] = []

    class Spy:
        name = "spy"

        def decide(self, view):
            seen.append((view.now, view.admitted, [r.seq for r in (*view.queue, *view.running)]))
            return make_policy("fcfs-rr").decide(view)

    Simulator(TRACE, Spy(), COST, SimConfig(instances=1)).run()
    assert seen
    for now, admitted, seqs in seen:
        assert admitted == sum(t.arrival_s <= now for t in TRACE)
        assert all(0 <= s < admitted for s in seqs)


def _phase_latency(phases: tuple[tuple[float, float], ...] | None, cost=None) -> float:  # type: ignore[no-untyped-def]
    """fcfs-rr's mean latency over a burst (5 requests/s for 20 s), then a lull (2.5/s for 20 s)."""
    import statistics

    from llmfleet.sim.instance import EngineConfig

    trace = [TraceRequest(f"r{i}", i * 0.2 if i < 100 else 20 + (i - 100) * 0.4, 40, 30 + 17 * (i % 5)) for i in range(150)]
    cfg = SimConfig(instances=2, engine=EngineConfig(max_running=2), speed_phases=phases)
    model = cost or linear_cost_model(0.0002, 0.010, decode_per_seq_s=0.001)
    return statistics.fmean(r.latency_s for r in Simulator(trace, make_policy("fcfs-rr"), model, cfg).run().records)


def test_a_speed_phase_from_the_start_is_the_engine_slowed_throughout() -> None:
    model = linear_cost_model(0.0002, 0.010, decode_per_seq_s=0.001)
    assert _phase_latency(((0.0, 1.3),)) == pytest.approx(_phase_latency(None, model.slowed(1.3)))
    assert _phase_latency(((0.0, 1.0),)) == pytest.approx(_phase_latency(None))


def test_a_slow_phase_costs_most_where_the_queue_builds() -> None:
    """The same mean speed over the run, slow during the burst or during the lull: the burst's
    queue grows while the engines are slow, and the run's mean latency more than doubles, where
    the lull hardly notices. A replay's mean speed cannot tell these apart (bench/DATAPLANE.md,
    section 4)."""
    steady = _phase_latency(None)
    in_burst, in_lull = _phase_latency(((0.0, 1.2), (20.0, 0.8))), _phase_latency(((0.0, 0.8), (20.0, 1.2)))
    assert in_burst > 2 * steady and in_lull < steady, (steady, in_burst, in_lull)


@pytest.mark.parametrize("phases", [((0.0, 1.0), (0.0, 1.2)), ((5.0, 1.0), (1.0, 1.2)), ((0.0, 0.0),), ((0.0, -1.0),)])
def test_speed_phases_must_ascend_and_be_positive(phases) -> None:
    with pytest.raises(ValueError, match="speed_phases"):
        SimConfig(speed_phases=phases)
