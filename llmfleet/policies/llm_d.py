"""`llm-d`: the llm-d inference scheduler's default endpoint picker, as its well-lit
"intelligent inference scheduling" path ships it.

Its EndpointPickerConfig profile `default` runs three scorers with these weights, then the
max-score picker:

* `prefix-cache-scorer`, weight 3: the share of the prompt's leading blocks the endpoint is
  believed to cache (estimated from where earlier prompts were routed);
* `queue-scorer`, weight 2: fewer requests waiting in the endpoint's vLLM queue;
* `kv-cache-utilization-scorer`, weight 2: lower vLLM KV-cache usage.

Flow control admits requests FCFS and every request goes to its endpoint at once, where vLLM's
own FCFS continuous batching runs it to completion.
"""

from __future__ import annotations

from llmfleet.policies.base import RoutedFcfs
from llmfleet.policies.routing import RoutingProfile

PROFILE = RoutingProfile(
    filters=("healthy",),
    scorers=(("prefix", 3.0), ("waiting-queue", 2.0), ("kv-cache", 2.0)),
)


class LlmD(RoutedFcfs):
    name = "llm-d"
    PROFILE = PROFILE
