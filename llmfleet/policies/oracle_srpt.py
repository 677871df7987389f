"""`oracle-srpt`: shortest-remaining-processing-time with the TRUE output lengths, preemptive
at slice boundaries (each slice is S tokens, then the request re-enters the ranking and
resumes on its own pod). It needs information no real system has: it is a reference bound,
not a product policy."""

from __future__ import annotations

import heapq

from llmfleet.core.scheduling import Decision, RequestState, SchedulerView
from llmfleet.policies.base import dispatch_in_order
from llmfleet.policies.routing import RoutingProfile, Tentative

# Sticky: a request resumes only on the pod that holds its KV, so a slice boundary costs a
# re-admission rather than a full re-prefill elsewhere (migrating made the oracle slower than
# plain FCFS on conv; see bench/SIM.md).
PROFILE = RoutingProfile(
    filters=("healthy", "sticky", "free-slot", "kv-room"),
    scorers=(("queue", 1.0), ("kv-cache", 1.0), ("prefix", 1.0)),
)


def remaining(req: RequestState) -> int:
    if req.true_output_tokens is None:
        raise ValueError(f"oracle-srpt needs true output lengths; request {req.request_id} has none")
    return req.true_output_tokens - req.generated_tokens


class OracleSrpt:
    name = "oracle-srpt"

    def __init__(self, slice_tokens: int | None = None, profile: RoutingProfile = PROFILE) -> None:
        self.slice_tokens = slice_tokens  # None: the view's S
        self.profile = profile

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        slots = Tentative(view.pods).free_slots()
        if slots == 0 or not view.queue:
            return ()
        ordered = heapq.nsmallest(slots * 2 + 8, view.queue, key=lambda r: (remaining(r), r.seq))
        return dispatch_in_order(view, ordered, self.profile, self.slice_tokens or view.slice_tokens)
