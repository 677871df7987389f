"""`ltr`: learning-to-rank shortest-job-first. The dispatcher holds the queue and releases
requests, when a pod can start them, in order of predicted output-length rank (the
`LengthEstimate.score` stored at admission). The starvation guard promotes any request that
has waited longer than `starvationBoundSeconds` ahead of all others, oldest first."""

from __future__ import annotations

from llmfleet.core.config import SchedulingFields
from llmfleet.core.scheduling import Decision, RequestState, SchedulerView
from llmfleet.policies.base import HOLDING, dispatch_ranked
from llmfleet.policies.routing import RoutingProfile


class LearningToRank:
    name = "ltr"

    def __init__(self, config: SchedulingFields | None = None, profile: RoutingProfile = HOLDING) -> None:
        config = config or SchedulingFields()
        self.slice_tokens = config.slice_tokens  # None: run to completion once started
        self.starvation_bound_s = config.starvation_bound_seconds
        self.profile = profile

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        cutoff = view.now - self.starvation_bound_s
        inf = float("inf")

        def key(r: RequestState) -> tuple[int, float, int]:
            if r.arrival_s < cutoff:
                return (0, r.arrival_s, r.seq)
            return (1, r.estimate.score if r.estimate is not None else inf, r.seq)

        return dispatch_ranked(view, key, self.profile, self.slice_tokens)
