"""`least-load`: llm-d-style load-aware routing. Every request goes out at once, in FCFS
order, to the pod with the best weighted queue-depth and KV-utilisation score; each engine
then runs its own FCFS continuous batching."""

from __future__ import annotations

from llmfleet.policies.base import RoutedFcfs
from llmfleet.policies.routing import RoutingProfile

PROFILE = RoutingProfile(filters=("healthy",), scorers=(("queue", 1.0), ("kv-cache", 1.0)))


class LeastLoad(RoutedFcfs):
    name = "least-load"
    PROFILE = PROFILE
