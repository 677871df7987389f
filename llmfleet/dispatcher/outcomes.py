"""How a slice ended, and what the dispatcher does next: failure handling as data.

`classify` turns what the slice stream reported into one `SliceOutcome`, in one place. It is the
only code that reads finish reasons, error flags and failures. `after_slice` is a pure function
from the outcome to an `AfterSlice` decision, tested in a table like the policies. The mechanism
(`slices.SliceExecution._after_slice`) then applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from llmfleet.dispatcher.slice_stream import PodFailure, SliceEnd


class SliceOutcome(Enum):
    STOPPED = "stopped"  # EOS, a stop token or a stop string: the request is complete
    LENGTH = "length"  # the request's max_tokens are generated
    SLICE_USED = "slice_used"  # the slice's budget is used; more to generate
    PREEMPTED = "preempted"  # the policy took it off its pod
    HANDED_BACK = "handed_back"  # a draining sidecar returned it mid-slice
    DRAINING = "draining"  # refused before it started: that pod is draining
    BAD_REQUEST = "bad_request"  # the engine rejected the request itself (it fails anywhere)
    ENGINE_REFUSED = "engine_refused"  # an engine error that says retrying cannot help
    POD_FAILED = "pod_failed"  # a broken stream, a stall, a retryable engine error


class Action(Enum):
    FINISH = "finish"  # end the request with `finish_reason`
    REQUEUE = "requeue"  # back to the queue; its KV likely still on this pod
    FAILOVER = "failover"  # back to the queue, away from this pod, counted as a failover
    FAIL = "fail"  # end the request with `code`


@dataclass(frozen=True)
class AfterSlice:
    action: Action
    finish_reason: str = ""
    code: str = ""  # a grpc.StatusCode name, for FAIL
    pod_draining: bool = False  # send that pod nothing more
    pod_cooldown: bool = False  # that pod takes no new slice for a while


def classify(end: SliceEnd | None, failure: PodFailure | None, remaining: int, preempting: bool) -> SliceOutcome:
    """The one place that reads a slice's end: finish reasons first, then how it broke."""
    if end is not None and end.finish_reason == "stop":
        return SliceOutcome.STOPPED
    if remaining <= 0:
        return SliceOutcome.LENGTH
    if preempting:
        return SliceOutcome.PREEMPTED
    if end is not None and end.finish_reason == "length":
        return SliceOutcome.SLICE_USED
    if end is not None and end.finish_reason == "handed_back":
        return SliceOutcome.HANDED_BACK
    if failure is not None and failure.draining:
        return SliceOutcome.DRAINING
    if end is not None and end.client_error:
        return SliceOutcome.BAD_REQUEST
    if end is not None and end.finish_reason == "error" and not end.retryable and failure is None:
        return SliceOutcome.ENGINE_REFUSED
    return SliceOutcome.POD_FAILED


def after_slice(outcome: SliceOutcome, failures: int, max_failures: int) -> AfterSlice:
    """What to do next. `failures` counts this request's failed attempts, this one included."""
    if outcome is SliceOutcome.STOPPED:
        return AfterSlice(Action.FINISH, finish_reason="stop")
    if outcome is SliceOutcome.LENGTH:
        return AfterSlice(Action.FINISH, finish_reason="length")
    if outcome in (SliceOutcome.PREEMPTED, SliceOutcome.SLICE_USED):
        return AfterSlice(Action.REQUEUE)
    if outcome in (SliceOutcome.HANDED_BACK, SliceOutcome.DRAINING):
        return AfterSlice(Action.REQUEUE, pod_draining=True)  # nothing failed: run it elsewhere
    if outcome is SliceOutcome.BAD_REQUEST:
        return AfterSlice(Action.FAIL, code="INVALID_ARGUMENT")  # and no pod is blamed for it
    if outcome is SliceOutcome.ENGINE_REFUSED:
        return AfterSlice(Action.FAIL, code="INTERNAL")
    if failures > max_failures:
        return AfterSlice(Action.FAIL, code="UNAVAILABLE", pod_cooldown=True)
    return AfterSlice(Action.FAILOVER, pod_cooldown=True)
