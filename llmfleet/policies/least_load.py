"""`least-load`: llm-d-style load-aware routing. Every request goes out at once, in FCFS
order, to the pod with the best weighted queue-depth and KV-utilisation score; each engine
then runs its own FCFS continuous batching."""

from __future__ import annotations

from llmfleet.core.scheduling import Decision, SchedulerView
from llmfleet.policies.base import dispatch_in_order
from llmfleet.policies.routing import RoutingProfile

PROFILE = RoutingProfile(filters=("healthy",), scorers=(("queue", 1.0), ("kv-cache", 1.0)))


class LeastLoad:
    name = "least-load"

    def __init__(self, profile: RoutingProfile = PROFILE) -> None:
        self.profile = profile

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        return dispatch_in_order(view, view.queue, self.profile)
