"""Shared building blocks for the queue-ordering policies.

`dispatch_in_order` is the one loop most policies share: walk the queue in the policy's
order and place each request with a routing profile until no pod can take more. The
policy decides the order, the profile decides where.
"""

from __future__ import annotations

from collections.abc import Iterable

from llmfleet.core.scheduling import ALL_REMAINING, Assignment, Decision, RequestState, SchedulerView
from llmfleet.policies.routing import RoutingProfile, Tentative

# Hold requests at the dispatcher and only release one when a pod can start it now: the
# queue order then decides who runs next, which an engine's internal FCFS queue would not.
HOLDING = RoutingProfile(
    filters=("healthy", "free-slot", "kv-room"),
    scorers=(("queue", 1.0), ("kv-cache", 1.0), ("affinity", 0.5)),
)


def dispatch_in_order(
    view: SchedulerView,
    ordered: Iterable[RequestState],
    profile: RoutingProfile = HOLDING,
    max_tokens: int | None = None,
    stop_at_first_blocked: bool = False,
) -> tuple[Decision, ...]:
    """Place requests in the given order; `max_tokens=None` means run to completion."""
    tent = Tentative(view.pods)
    out: list[Decision] = []
    holding = "free-slot" in profile.filters
    for req in ordered:
        if holding and tent.free_slots() == 0:
            break
        pod = profile.pick(view, req, tent.pods)
        if pod is None:
            if stop_at_first_blocked:
                break
            continue
        tent.place(req, pod)
        out.append(Assignment(req.request_id, pod.pod_id, max_tokens or ALL_REMAINING))
    return tuple(out)


def starved(view: SchedulerView, req: RequestState) -> bool:
    """The starvation guard: waited (since arrival) longer than the configured bound."""
    return view.now - req.arrival_s > view.starvation_bound_s
