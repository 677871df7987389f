"""`llmfleet`: the default policy, the combination that measured best (bench/SIM.md).

* Order: learned-rank shortest-job-first with the starvation guard (from `ltr`): the
  dominant win, because on chat traffic most of the queueing delay is short requests stuck
  behind long ones.
* Admission: the dispatcher holds the queue and only releases a request when a pod can start
  it now (free slot and KV room): the engine's FCFS queue would otherwise undo the ranking.
* Routing: filters healthy / free-slot / kv-room, then scorers prefix (2) + queue (1) +
  kv-cache (1) + affinity (1), then max-score -- prefix reuse where traces have `hash_ids`,
  balance otherwise.
* Slices: optional (`slice_tokens`); with slices a long request re-enters the ranking after
  each slice, preferring the pod that holds its KV. Off by default: on the traces measured,
  every re-admission costs more than the re-ranking gains (bench/SIM.md).
* Guard: the starvation bound (`view.starvation_bound_s`), or optionally a deadline guard
  (`deadline_s`) that starts a request once waiting longer would make it miss the deadline
  at its predicted p90 length -- a different point on the mean-versus-p99 trade-off.
"""

from __future__ import annotations

import heapq

from llmfleet.core.scheduling import Decision, RequestState, SchedulerView
from llmfleet.policies.base import dispatch_in_order
from llmfleet.policies.routing import RoutingProfile, Tentative

PROFILE = RoutingProfile(
    filters=("healthy", "free-slot", "kv-room"),
    scorers=(("prefix", 2.0), ("queue", 1.0), ("kv-cache", 1.0), ("affinity", 1.0)),
)


class LLMFleetDefault:
    name = "llmfleet"

    def __init__(
        self,
        profile: RoutingProfile = PROFILE,
        slice_tokens: int | None = None,
        growth: float = 2.0,
        deadline_s: float | None = None,
        pace_s_per_token: float = 0.07,
    ) -> None:
        self.profile = profile
        self.slice_tokens = slice_tokens  # None: run to completion once started
        self.growth = growth
        # Deadline guard (None: the plain starvation guard). A request becomes urgent once
        # waiting any longer would make it miss `deadline_s` end to end, given its predicted
        # p90 length at `pace_s_per_token`; urgent requests go first, latest start first.
        self.deadline_s = deadline_s
        self.pace = pace_s_per_token

    def remaining(self, req: RequestState) -> float:
        """Expected tokens still to come: a request that already produced g tokens is assumed to
        need at least (growth - 1) * g more (heavy-tailed lengths), so its rank grows with age."""
        g = req.generated_tokens
        expected = req.estimate.expected_tokens if req.estimate is not None else 128.0
        return max(expected, self.growth * g, g + 1.0) - g

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        slots = Tentative(view.pods).free_slots()
        if slots == 0 or not view.queue:
            return ()
        cutoff = view.now - view.starvation_bound_s
        remaining = self.remaining
        deadline, pace, now = self.deadline_s, self.pace, view.now

        def key(r: RequestState) -> tuple[int, float, int]:
            if deadline is not None:
                upper = r.estimate.upper_tokens if r.estimate is not None else 512.0
                latest_start = r.arrival_s + deadline - max(0.0, upper - r.generated_tokens) * pace
                if latest_start <= now:
                    return (0, latest_start, r.seq)
            elif r.arrival_s < cutoff:
                return (0, r.arrival_s, r.seq)
            return (1, remaining(r), r.seq)

        ordered = heapq.nsmallest(slots * 2 + 8, view.queue, key=key)
        return dispatch_in_order(view, ordered, self.profile, self.slice_tokens)
