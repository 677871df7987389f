"""`alise`: priority by estimated remaining execution time, with aging, plus memory-aware
preemption (ALISE).

Priority value (lower runs first): estimated seconds still needed -- re-prefill of the
context plus predicted remaining tokens at the pod's per-token pace -- minus ``aging`` times
the seconds since arrival, so long requests are not starved. When no pod can start the best
queued request (no slot, or no KV room), the running request with the worst value on a
pod is preempted if it is worse by `preempt_ratio` (its KV is recomputed when it resumes: the
paper's swap-to-host option does not exist in vLLM's V1 engine). One preemption per pod per
decision keeps the policy from thrashing.
"""

from __future__ import annotations

import heapq

from llmfleet.core.config import SchedulingFields
from llmfleet.core.scheduling import (
    FALLBACK_S_PER_TOKEN,
    Decision,
    PodState,
    Preempt,
    RequestState,
    SchedulerView,
)
from llmfleet.policies.base import HOLDING, dispatch_in_order
from llmfleet.policies.routing import RoutingProfile, Tentative


def _pace(pod: PodState | None) -> float:
    if pod is not None and pod.est_remaining_tokens > 0:
        return max(1e-4, pod.est_remaining_s / pod.est_remaining_tokens)
    return FALLBACK_S_PER_TOKEN


class Alise:
    name = "alise"

    def __init__(
        self,
        config: SchedulingFields | None = None,
        aging: float = 0.05,
        preempt_ratio: float = 4.0,
        profile: RoutingProfile = HOLDING,
    ) -> None:
        # ALISE's aging replaces a starvation bound; it takes no slice length (it preempts instead).
        del config
        self.aging = aging
        self.preempt_ratio = preempt_ratio
        self.profile = profile

    def value(self, view: SchedulerView, req: RequestState, pod: PodState | None = None) -> float:
        recompute = pod.recompute_s_per_token if pod is not None else 0.0
        est = req.expected_remaining_tokens() * _pace(pod) + req.context_tokens * recompute
        return est - self.aging * (view.now - req.arrival_s)

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        if not view.queue:
            return ()
        pods = {p.pod_id: p for p in view.pods}
        ref = view.pods[0] if view.pods else None
        tent = Tentative(view.pods)
        slots = tent.free_slots()
        ordered = heapq.nsmallest(slots * 2 + 8, view.queue, key=lambda r: (self.value(view, r, ref), r.seq))
        out: list[Decision] = list(dispatch_in_order(view, ordered, self.profile))
        if len(out) >= len(view.queue) or not ordered:
            return tuple(out)
        placed = {d.request_id for d in out}
        head = next((r for r in ordered if r.request_id not in placed), None)
        if head is None:
            return tuple(out)
        head_value = self.value(view, head, ref)
        victims: dict[str, tuple[float, RequestState]] = {}
        for r in view.running:
            if r.pod_id is None or r.pod_id not in pods:
                continue
            v = self.value(view, r, pods[r.pod_id])
            if r.pod_id not in victims or v > victims[r.pod_id][0]:
                victims[r.pod_id] = (v, r)
        worst = sorted(victims.values(), key=lambda vr: -vr[0])
        for v, r in worst[:1]:
            if v > self.preempt_ratio * max(head_value, 1e-3):
                out.append(Preempt(r.request_id, pods[r.pod_id or ""].pod_id))
        return tuple(out)
