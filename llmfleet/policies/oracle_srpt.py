"""`oracle-srpt`: shortest-remaining-processing-time with the TRUE output lengths, preemptive
at slice boundaries (each slice is S tokens, then the request re-enters the ranking and
resumes on its own pod). It needs information no real system has: it is a reference bound,
not a product policy."""

from __future__ import annotations

from llmfleet.core.config import SchedulingFields
from llmfleet.core.scheduling import Decision, RequestState, SchedulerView
from llmfleet.policies.base import dispatch_ranked
from llmfleet.policies.routing import RoutingProfile

# Sticky: a request resumes only on the pod that holds its KV, so a slice boundary costs a
# re-admission rather than a full re-prefill elsewhere (migrating made the oracle slower than
# plain FCFS on conv; see bench/SIM.md). New requests are placed as `llmfleet` places them
# (prefix reuse first), so on prefix-heavy traces the bound is not handicapped by its routing.
PROFILE = RoutingProfile(
    filters=("healthy", "sticky", "free-slot", "kv-room"),
    scorers=(("prefix", 2.0), ("queue", 1.0), ("kv-cache", 1.0)),
)


def remaining(req: RequestState) -> int:
    if req.true_output_tokens is None:
        raise ValueError(f"oracle-srpt needs true output lengths; request {req.request_id} has none")
    return req.true_output_tokens - req.generated_tokens


class OracleSrpt:
    name = "oracle-srpt"

    def __init__(self, config: SchedulingFields | None = None, profile: RoutingProfile = PROFILE) -> None:
        self.slice_tokens = (config or SchedulingFields()).slice_or_fallback
        self.profile = profile

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        return dispatch_ranked(view, lambda r: (remaining(r), r.seq), self.profile, self.slice_tokens)
