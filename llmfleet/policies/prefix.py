"""`prefix`: prefix-cache-aware routing (llm-d's prefix scorer): the fraction of a prompt's
leading `hash_ids` a pod already caches, weighed together with queue depth and KV load.
Requests go out at once in FCFS order and run to completion."""

from __future__ import annotations

from llmfleet.core.scheduling import Decision, SchedulerView
from llmfleet.policies.base import dispatch_in_order
from llmfleet.policies.routing import RoutingProfile

PROFILE = RoutingProfile(
    filters=("healthy",),
    scorers=(("prefix", 2.0), ("queue", 1.0), ("kv-cache", 1.0)),
)


class PrefixAware:
    name = "prefix"

    def __init__(self, profile: RoutingProfile = PROFILE) -> None:
        self.profile = profile

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        return dispatch_in_order(view, view.queue, self.profile)
