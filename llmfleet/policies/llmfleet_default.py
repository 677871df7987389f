"""`llmfleet`: the default policy, the combination that measured best (bench/SIM.md).

* Order: learned-rank shortest-remaining-first. On chat traffic most of the queueing delay is
  short requests stuck behind long ones. A request that already generated g tokens is assumed
  to need at least (growth - 1) * g more (lengths are heavy-tailed), so a long request that was
  predicted short sinks in the ranking once it is re-ranked at a slice boundary.
* Guard: a request goes ahead of every other, oldest first, once it has waited
  `starvationBoundSeconds`, or once later arrivals have overtaken it `starvationOvertakeTurns`
  times as often as the fleet has requests running. The bound in seconds is the
  mean-versus-tail dial at a sustained load (bench/results/sim_guard_conv.png): 30 s keeps the
  p99 at vanilla vLLM's there. But when the engines fall behind for less time than the bound, it
  never fires and the tail grows with the queue (p99 1.3-2.1x `fcfs-rr`'s on the demo's
  workload in the simulator). The overtake bound follows the load instead: overtaken by one
  turn of every busy slot, a request has waited about one more short request's time than it
  would have in arrival order, whatever the fleet's size and speed (bench/SIM.md). In a queue
  deeper than the batch one turn reaches nearly every waiter and the order falls back to FCFS,
  so the bound is the larger of the turns and `starvationOvertakeQueueFraction` (0.5) of the
  queue: 0.906 of `fcfs-rr`'s mean instead of 0.921 at 4.2/s in the simulator, for 0.03 more of
  its p99 (0.92 against 0.96 live, bench/DATAPLANE.md section 4). A guard relative to each
  request's predicted size was measured and did no better.
* Admission: the dispatcher holds the queue and releases a request when a pod can start it now
  (free slot and KV room), plus `engineLookahead` (default 0) more per pod that wait inside the
  engine. Each carries its rank (`Assignment.rank`) and the engine's priority queue starts them
  in that order, so a slot freed by a finished request is refilled at the engine's next step
  rather than after a round trip to the dispatcher, and the engine's queue never undoes the
  ranking. On the CPU fleet the lookahead measured no better than holding (bench/DATAPLANE.md).
* Prefill pacing (`prefillPaceTokens`): a pod gets a new request only once what it is still
  prefilling, plus the new prompt's uncached tokens, fits the budget (or it prefills nothing).
  Prompts released in bursts become multi-second chunked-prefill stalls for every running
  decode, and the short requests caught in them miss their time-per-token SLO; released one at
  a time the same work is spread thin. A request waits for the pod that caches its prefix
  rather than lose the hit (`llmfleet.policies.routing.pace_prefill`).
* Routing: filters healthy / free-slot / kv-room, then pacing, then scorers prefix (2) + queue
  (1) + kv-cache (1) + affinity (1), then max-score -- prefix reuse where traces have
  `hash_ids`, balance otherwise; affinity sends a resumed slice back to the pod that holds its KV.
* Slices: `sliceTokens` when set (each slice re-ranks the request); unset runs to completion,
  which measured best (bench/SIM.md).
"""

from __future__ import annotations

from dataclasses import replace

from llmfleet.core.config import SchedulingFields
from llmfleet.core.scheduling import FALLBACK_OUTPUT_TOKENS, Decision, RequestState, SchedulerView
from llmfleet.policies.base import dispatch_ranked, overtaken_through
from llmfleet.policies.routing import RoutingProfile

PROFILE = RoutingProfile(
    filters=("healthy", "free-slot", "kv-room"),
    scorers=(("prefix", 2.0), ("queue", 1.0), ("kv-cache", 1.0), ("affinity", 1.0)),
)


class LLMFleetDefault:
    name = "llmfleet"

    def __init__(
        self,
        config: SchedulingFields | None = None,
        profile: RoutingProfile = PROFILE,
        growth: float = 2.0,
    ) -> None:
        config = config or SchedulingFields()
        self.slice_tokens = config.slice_tokens  # None: run to completion once started
        self.starvation_bound_s = config.starvation_bound_seconds
        self.overtake_turns = config.starvation_overtake_turns
        self.overtake_queue_fraction = config.starvation_overtake_queue_fraction
        self.profile = replace(
            profile, prefill_pace_tokens=config.prefill_pace_tokens, lookahead=config.engine_lookahead
        )
        self.growth = growth

    def remaining(self, req: RequestState) -> float:
        g = req.generated_tokens
        est = req.estimate
        if est is not None and est.at_generated > 0:
            # A re-estimate read the text so far: trust it over the growth prior.
            left = max(est.expected_tokens - g, 1.0)
        else:
            expected = est.expected_tokens if est is not None else FALLBACK_OUTPUT_TOKENS
            left = max(expected, self.growth * g, g + 1.0) - g
        # The client's max_tokens is a hard bound: a request capped at 20 tokens is short
        # whatever its prompt suggests.
        if req.max_output_tokens is not None:
            left = min(left, max(req.max_output_tokens - g, 1.0))
        return left

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        cutoff, remaining = view.now - self.starvation_bound_s, self.remaining
        overtaken = overtaken_through(view, self.overtake_turns, self.overtake_queue_fraction)

        def key(r: RequestState) -> tuple[int, float, int]:
            if r.arrival_s < cutoff or r.seq <= overtaken:
                return (0, r.arrival_s, r.seq)
            return (1, remaining(r), r.seq)

        def rank(r: RequestState) -> int:
            # The engine's queue order: guarded requests first (the engine breaks ties by
            # arrival), then shortest remaining first, in tokens.
            tier, left, _ = key(r)  # tier 0: guarded
            return 0 if tier == 0 else 1 + int(left)  # dispatch clips to MAX_RANK

        return dispatch_ranked(view, key, self.profile, self.slice_tokens, rank)
