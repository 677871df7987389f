"""The frozen scheduling contract: snapshots and decisions are immutable ids and counts."""

from __future__ import annotations

import dataclasses

import pytest

from llmfleet.core.prediction import LengthEstimate
from llmfleet.core.scheduling import (
    ALL_REMAINING,
    Assignment,
    DecisionBatch,
    PodState,
    Preempt,
    RequestState,
    SchedulerView,
)


def test_snapshots_and_decisions_are_frozen() -> None:
    req = RequestState("a", 0, 0.0, 10)
    pod = PodState("p")
    view = SchedulerView(now=1.0, queue=(req,), running=(), pods=(pod,))
    for obj, field in (
        (req, "generated_tokens"),
        (pod, "running"),
        (view, "now"),
        (Assignment("a", "p"), "pod_id"),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, 3)


@pytest.mark.parametrize(
    ("generated", "estimate", "max_out", "expected", "remaining"),
    [
        (0, None, None, 128.0, 128.0),  # no estimate: a generic guess
        (0, LengthEstimate(0.0, 50.0, 90.0), None, 50.0, 50.0),
        (60, LengthEstimate(0.0, 50.0, 90.0), None, 61.0, 1.0),  # already past the estimate
        (0, LengthEstimate(0.0, 500.0, 900.0), 100, 100.0, 100.0),  # capped by the client
    ],
)
def test_expected_lengths(generated, estimate, max_out, expected, remaining) -> None:
    req = RequestState(
        "a", 0, 0.0, 10, generated_tokens=generated, estimate=estimate, max_output_tokens=max_out
    )
    assert req.expected_output_tokens() == pytest.approx(expected)
    assert req.expected_remaining_tokens() == pytest.approx(remaining)
    assert req.context_tokens == 10 + generated


@pytest.mark.parametrize(
    ("cap", "used", "max_running", "running", "waiting", "free_kv", "slots", "util"),
    [
        (1000, 250, 4, 1, 1, 750, 2, 0.25),
        (1000, 1200, 4, 4, 3, 0, 0, 1.2),
        (0, 0, 1, 0, 0, 0, 1, 1.0),
    ],
)
def test_pod_derived_numbers(cap, used, max_running, running, waiting, free_kv, slots, util) -> None:
    pod = PodState(
        "p",
        kv_capacity_tokens=cap,
        kv_used_tokens=used,
        max_running=max_running,
        running=running,
        waiting=waiting,
    )
    assert pod.kv_free_tokens == free_kv
    assert pod.free_slots == slots
    assert pod.kv_utilization == pytest.approx(util)


def test_assignment_rejects_empty_slices() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        Assignment("a", "p", 0)
    assert Assignment("a", "p").max_tokens == ALL_REMAINING


def test_decision_batch_puts_preemptions_first() -> None:
    batch = DecisionBatch.of([Assignment("a", "p"), Preempt("b", "p"), Assignment("c", "q", 5)])
    assert [p.request_id for p in batch.preempts] == ["b"]
    assert [a.request_id for a in batch.assignments] == ["a", "c"]


def test_view_pod_lookup() -> None:
    view = SchedulerView(now=0.0, queue=(), running=(), pods=(PodState("x"), PodState("y")))
    assert view.pod("y").pod_id == "y"
    with pytest.raises(KeyError):
        view.pod("z")


def test_deferred_builds_its_tuple_once_on_first_read_and_reads_like_one():
    from llmfleet.core.scheduling import Deferred

    calls = []

    def make() -> tuple[int, ...]:
        calls.append(1)
        return (3, 1, 2)

    d = Deferred(make)
    assert not calls, "built before anyone read it"
    assert len(d) == 3 and list(d) == [3, 1, 2] and d[0] == 3 and d[1:] == (1, 2)
    assert d == (3, 1, 2) and d == Deferred(lambda: (3, 1, 2)) and sorted(d) == [1, 2, 3]
    assert len(calls) == 1, "built more than once"
