"""`ltr`: learning-to-rank shortest-job-first. The dispatcher holds the queue and releases
requests, when a pod can start them, in order of predicted output-length rank (the
`LengthEstimate.score` stored at admission). The starvation guard promotes any request that
has waited longer than `view.starvation_bound_s` ahead of all others, oldest first."""

from __future__ import annotations

import heapq

from llmfleet.core.scheduling import Decision, RequestState, SchedulerView
from llmfleet.policies.base import HOLDING, dispatch_in_order, starved
from llmfleet.policies.routing import RoutingProfile, Tentative


def rank_key(view: SchedulerView, req: RequestState) -> tuple[int, float, int]:
    if starved(view, req):
        return (0, req.arrival_s, req.seq)
    score = req.estimate.score if req.estimate is not None else float("inf")
    return (1, score, req.seq)


class LearningToRank:
    name = "ltr"

    def __init__(self, profile: RoutingProfile = HOLDING, slice_tokens: int | None = None) -> None:
        self.profile = profile
        self.slice_tokens = slice_tokens  # None: run to completion once started

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        slots = Tentative(view.pods).free_slots()
        if slots == 0 or not view.queue:
            return ()
        # Only the best few can start now; a partial selection beats sorting a long queue.
        cutoff = view.now - view.starvation_bound_s
        inf = float("inf")

        def key(r: RequestState) -> tuple[int, float, int]:
            # rank_key, inlined: this runs over the whole queue at every scheduling point.
            if r.arrival_s < cutoff:
                return (0, r.arrival_s, r.seq)
            return (1, r.estimate.score if r.estimate is not None else inf, r.seq)

        ordered = heapq.nsmallest(slots * 2 + 8, view.queue, key=key)
        return dispatch_in_order(view, ordered, self.profile, self.slice_tokens)
