"""`fcfs-rr`: what users run today -- every request goes straight to the next pod in
round-robin order (production-stack's default router) and runs to completion there under
vLLM's own FCFS continuous batching."""

from __future__ import annotations

from llmfleet.core.scheduling import ALL_REMAINING, Assignment, Decision, SchedulerView


class FcfsRoundRobin:
    name = "fcfs-rr"

    def __init__(self, config: object = None) -> None:
        del config  # routing only: no scheduling setting applies

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        pods = [p for p in view.pods if p.healthy]
        if not pods:
            return ()
        # Round-robin by admission number keeps the policy stateless (and replayable).
        return tuple(
            Assignment(r.request_id, pods[r.seq % len(pods)].pod_id, ALL_REMAINING) for r in view.queue
        )
