"""`dynamo`: NVIDIA Dynamo's KV router (`--router-mode kv`) with its defaults.

For each worker the router computes a cost in KV blocks,

    cost = kv_overlap_score_weight * potential prefill blocks + potential decode blocks,

where the prefill blocks are the prompt's blocks the worker does not already cache and the
decode blocks are the worker's active blocks plus the request's own. With the default weight
1.0 and router temperature 0 it picks the lowest cost. Requests go to the worker at once, where
vLLM's FCFS continuous batching runs them to completion.
"""

from __future__ import annotations

from llmfleet.policies.base import RoutedFcfs
from llmfleet.policies.routing import RoutingProfile

PROFILE = RoutingProfile(filters=("healthy",), scorers=(("kv-router", 1.0),))


class DynamoKvRouter(RoutedFcfs):
    name = "dynamo"
    PROFILE = PROFILE
