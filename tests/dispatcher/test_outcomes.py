"""Failure handling as data: how a slice's end is classified, and what follows, in two tables."""

from __future__ import annotations

import pytest

from llmfleet.dispatcher.outcomes import Action, AfterSlice, SliceOutcome, after_slice, classify
from llmfleet.dispatcher.slice_stream import PodFailure, SliceEnd

Out = SliceOutcome
BROKEN = PodFailure("stream broke")
DRAINING = PodFailure("refused", draining=True)


@pytest.mark.parametrize("end, failure, remaining, preempting, outcome", [
    (SliceEnd("stop"), None, 10, False, Out.STOPPED),
    (SliceEnd("stop"), None, 0, True, Out.STOPPED),                # a stop wins over everything
    (SliceEnd("length"), None, 0, False, Out.LENGTH),
    (None, BROKEN, 0, False, Out.LENGTH),                           # every token arrived before it broke
    (None, None, 10, True, Out.PREEMPTED),
    (SliceEnd("length"), None, 10, False, Out.SLICE_USED),
    (SliceEnd("handed_back"), None, 10, False, Out.HANDED_BACK),
    (None, DRAINING, 10, False, Out.DRAINING),
    (SliceEnd("error", "too long", False, True), None, 10, False, Out.BAD_REQUEST),
    (SliceEnd("error", "fatal", False, False), None, 10, False, Out.ENGINE_REFUSED),
    (SliceEnd("error", "HTTP 500", True, False), None, 10, False, Out.POD_FAILED),
    (None, BROKEN, 10, False, Out.POD_FAILED),
    (None, None, 10, False, Out.POD_FAILED),                        # the stream ended with no result
])  # fmt: skip
def test_classify(end, failure, remaining, preempting, outcome) -> None:
    assert classify(end, failure, remaining, preempting) is outcome


@pytest.mark.parametrize("outcome, failures, expected", [
    (Out.STOPPED, 0, AfterSlice(Action.FINISH, finish_reason="stop")),
    (Out.LENGTH, 0, AfterSlice(Action.FINISH, finish_reason="length")),
    (Out.SLICE_USED, 0, AfterSlice(Action.REQUEUE)),
    (Out.PREEMPTED, 0, AfterSlice(Action.REQUEUE)),
    (Out.HANDED_BACK, 0, AfterSlice(Action.REQUEUE, pod_draining=True)),
    (Out.DRAINING, 0, AfterSlice(Action.REQUEUE, pod_draining=True)),
    (Out.BAD_REQUEST, 0, AfterSlice(Action.FAIL, code="INVALID_ARGUMENT")),   # no pod blamed
    (Out.ENGINE_REFUSED, 0, AfterSlice(Action.FAIL, code="INTERNAL")),
    (Out.POD_FAILED, 1, AfterSlice(Action.FAILOVER, pod_cooldown=True)),
    (Out.POD_FAILED, 6, AfterSlice(Action.FAILOVER, pod_cooldown=True)),
    (Out.POD_FAILED, 7, AfterSlice(Action.FAIL, code="UNAVAILABLE", pod_cooldown=True)),  # bounded retries
])  # fmt: skip
def test_after_slice(outcome, failures, expected) -> None:
    assert after_slice(outcome, failures, max_failures=6) == expected


def test_every_outcome_has_a_decision() -> None:
    for outcome in SliceOutcome:
        assert isinstance(after_slice(outcome, 1, 6), AfterSlice)
