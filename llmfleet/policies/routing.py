"""Endpoint picking in the style of the Gateway API Inference Extension: filters, then
weighted scorers in [0, 1], then a picker. Each plugin is a small function registered here,
by name, in one place; a `RoutingProfile` names the plugins and the scorer weights.

* Filter: ``(view, request, pods) -> pods`` (a subset; an empty result means "nowhere fits").
* Scorer: ``(view, request, pods) -> list[float]``, one score in [0, 1] per pod; higher is better.
* Picker: ``(request, pods, total_scores) -> pod``.

A profile may also pace prefills (`prefill_pace_tokens`, after the filters): see `pace_prefill`.

Policies that place several requests in one decision call keep their own running tally
with `Tentative`, so the second request sees the first one's load.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from llmfleet.core.scheduling import FALLBACK_S_PER_TOKEN, PodState, RequestState, SchedulerView

Filter = Callable[[SchedulerView, RequestState, Sequence[PodState]], list[PodState]]
Scorer = Callable[[SchedulerView, RequestState, Sequence[PodState]], list[float]]
Picker = Callable[[RequestState, Sequence[PodState], Sequence[float]], PodState]


def _kv_need(req: RequestState) -> int:
    return req.context_tokens + 1


# ----------------------------------------------------------------------------- filters
# The live dispatcher runs a policy for almost every assignment, over every pod: a `max()` call
# per pod in each plugin made one decision over 40 pods cost about twice as much, so the
# per-pod helpers use conditionals instead (bench/DATAPLANE.md section 6).
def filter_healthy(view: SchedulerView, req: RequestState, pods: Sequence[PodState]) -> list[PodState]:
    return [p for p in pods if p.healthy]


def open_slots(pod: PodState, lookahead: int = 0) -> int:
    """Requests the pod can still take: its free slots plus `lookahead` more that would wait
    inside the engine (where vLLM's priority queue keeps them in the policy's rank order)."""
    n = pod.max_running + lookahead - pod.running - pod.waiting
    return n if n > 0 else 0


def filter_free_slot(
    view: SchedulerView, req: RequestState, pods: Sequence[PodState], lookahead: int = 0
) -> list[PodState]:
    """Pods that can start the request now (or, with a lookahead, right after a running one ends)."""
    return [p for p in pods if open_slots(p, lookahead) > 0]


def filter_kv_room(view: SchedulerView, req: RequestState, pods: Sequence[PodState]) -> list[PodState]:
    """Pods whose free KV holds the request's context (memory-aware admission)."""
    need = _kv_need(req)
    return [p for p in pods if p.kv_free_tokens >= need]


def filter_idle(view: SchedulerView, req: RequestState, pods: Sequence[PodState]) -> list[PodState]:
    """Pods with nothing running or queued (static batching only feeds empty engines)."""
    return [p for p in pods if p.running == 0 and p.waiting == 0]


def filter_sticky(view: SchedulerView, req: RequestState, pods: Sequence[PodState]) -> list[PodState]:
    """A request that already ran somewhere resumes only on that pod (its KV is cached there)."""
    if req.pod_id is None:
        return list(pods)
    return [p for p in pods if p.pod_id == req.pod_id]


FILTERS: dict[str, Filter] = {
    "sticky": filter_sticky,
    "healthy": filter_healthy,
    "free-slot": filter_free_slot,
    "kv-room": filter_kv_room,
    "idle": filter_idle,
}


def pace_prefill(req: RequestState, pods: Sequence[PodState], budget: int) -> list[PodState]:
    """Prefill pacing: pods whose pending prefill plus this request's uncached prompt fits
    `budget` tokens, or that are prefilling nothing.

    vLLM batches every waiting prompt into the next iterations (chunked prefill), and each such
    iteration stalls every running decode: a burst of prompts released to one pod at once is a
    multi-second stall, and a short request caught in it misses its time-per-token SLO. Released
    one at a time, the same prefill work becomes many small stalls spread over decode steps.
    A request never trades a prefix-cache hit for a shorter wait: when a pod that caches more of
    its prompt than any eligible pod is only held back by pacing, the request waits for it
    (an empty result keeps it queued).
    """
    if not req.hash_ids:  # nothing cacheable: no hits, and none to wait for
        need = req.context_tokens
        return [p for p in pods if p.pending_prefill_tokens == 0 or p.pending_prefill_tokens + need <= budget]
    first = req.hash_ids[0]  # most pods miss on the first block; skip the call for them
    hits = [prefix_hit_tokens(req, p) if first in p.cached_prefixes else 0 for p in pods]
    eligible = [
        p.pending_prefill_tokens == 0 or p.pending_prefill_tokens + req.context_tokens - hit <= budget
        for p, hit in zip(pods, hits, strict=True)
    ]
    best_eligible = max((hit for hit, ok in zip(hits, eligible, strict=True) if ok), default=0)
    if hits and max(hits) > best_eligible:
        return []
    return [p for p, ok in zip(pods, eligible, strict=True) if ok]


# ----------------------------------------------------------------------------- scorers
def _inverse_minmax(values: Sequence[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-12:
        return [1.0] * len(values)
    return [(hi - v) / (hi - lo) for v in values]


def score_queue(view: SchedulerView, req: RequestState, pods: Sequence[PodState]) -> list[float]:
    """Fewer requests running plus waiting is better (llm-d's queue scorer)."""
    return _inverse_minmax([float(p.running + p.waiting) for p in pods])


def score_waiting_queue(view: SchedulerView, req: RequestState, pods: Sequence[PodState]) -> list[float]:
    """Fewer requests waiting inside the engine is better (the Inference Extension's queue-scorer,
    which reads vLLM's num_requests_waiting)."""
    return _inverse_minmax([float(p.waiting) for p in pods])


def matched_blocks(req: RequestState, pod: PodState) -> int:
    """How many of the prompt's leading prefix blocks the pod is believed to cache."""
    n = 0
    for h in req.hash_ids:
        if h not in pod.cached_prefixes:
            break
        n += 1
    return n


def prefix_hit_tokens(req: RequestState, pod: PodState) -> int:
    """Prompt tokens at the head of the request whose KV the pod is believed to cache."""
    return min(req.prompt_tokens, matched_blocks(req, pod) * pod.prefix_block_tokens)


def kv_router_cost(req: RequestState, pod: PodState, overlap_weight: float = 1.0) -> float:
    """Dynamo's KV-router cost in blocks: overlap_weight x prefill blocks still to compute on the
    pod + decode blocks the pod would hold (its active blocks plus the request's own)."""
    bs = max(1, pod.block_size)
    prefill_blocks = (req.context_tokens - prefix_hit_tokens(req, pod)) / bs
    decode_blocks = pod.kv_used_tokens / bs + req.context_tokens / bs
    return overlap_weight * prefill_blocks + decode_blocks


def score_kv_router(view: SchedulerView, req: RequestState, pods: Sequence[PodState]) -> list[float]:
    """Lower Dynamo KV-router cost is better, min-max scaled so the argmin scores 1."""
    return _inverse_minmax([kv_router_cost(req, p) for p in pods])


def score_kv_cache(view: SchedulerView, req: RequestState, pods: Sequence[PodState]) -> list[float]:
    """Lower KV utilisation is better (llm-d's kv-cache-utilization scorer)."""
    return [1.0 - u if (u := p.kv_utilization) < 1.0 else 0.0 for p in pods]


def score_remaining_work(view: SchedulerView, req: RequestState, pods: Sequence[PodState]) -> list[float]:
    """Less estimated remaining work is better (SCLS's max-min offloading signal)."""
    return _inverse_minmax([p.est_remaining_s for p in pods])


def score_prefix(view: SchedulerView, req: RequestState, pods: Sequence[PodState]) -> list[float]:
    """Fraction of the prompt's leading hash blocks the pod already caches."""
    if not req.hash_ids:
        return [0.0] * len(pods)
    first, n = req.hash_ids[0], len(req.hash_ids)
    return [matched_blocks(req, p) / n if first in p.cached_prefixes else 0.0 for p in pods]


def score_affinity(view: SchedulerView, req: RequestState, pods: Sequence[PodState]) -> list[float]:
    """1 for the pod that last ran the request (its KV is probably still cached there)."""
    if req.pod_id is None:
        return [0.0] * len(pods)
    return [1.0 if p.pod_id == req.pod_id else 0.0 for p in pods]


SCORERS: dict[str, Scorer] = {
    "queue": score_queue,
    "waiting-queue": score_waiting_queue,
    "kv-router": score_kv_router,
    "kv-cache": score_kv_cache,
    "remaining-work": score_remaining_work,
    "prefix": score_prefix,
    "affinity": score_affinity,
}


# ----------------------------------------------------------------------------- pickers
def pick_max_score(req: RequestState, pods: Sequence[PodState], scores: Sequence[float]) -> PodState:
    """Highest total score; ties rotate with the request's sequence number so they spread out."""
    best = max(scores)
    tied = [p for p, s in zip(pods, scores, strict=True) if s >= best - 1e-9]
    return tied[req.seq % len(tied)]


def pick_first(req: RequestState, pods: Sequence[PodState], scores: Sequence[float]) -> PodState:
    best = max(scores)
    return next(p for p, s in zip(pods, scores, strict=True) if s >= best - 1e-9)


PICKERS: dict[str, Picker] = {"max-score": pick_max_score, "first": pick_first}


@dataclass(frozen=True)
class RoutingProfile:
    """Which plugins to run, and how much each scorer weighs."""

    filters: tuple[str, ...] = ("healthy",)
    scorers: tuple[tuple[str, float], ...] = (("queue", 1.0), ("kv-cache", 1.0))
    picker: str = "max-score"
    prefill_pace_tokens: int | None = None  # None: no pacing
    lookahead: int = 0  # what "free-slot" lets wait inside each engine beyond its free slots

    def __post_init__(self) -> None:
        unknown = [f for f in self.filters if f not in FILTERS]
        unknown += [s for s, _ in self.scorers if s not in SCORERS]
        unknown += [self.picker] if self.picker not in PICKERS else []
        if unknown:
            raise ValueError(f"unknown routing plugins: {unknown}")
        if any(w < 0 for _, w in self.scorers):
            raise ValueError("scorer weights must be non-negative")
        if self.lookahead < 0:
            raise ValueError("lookahead must be non-negative")

    def candidates(self, view: SchedulerView, req: RequestState, pods: Sequence[PodState]) -> list[PodState]:
        out = list(pods)
        for name in self.filters:
            if name == "free-slot":
                out = filter_free_slot(view, req, out, self.lookahead)
            else:
                out = FILTERS[name](view, req, out)
            if not out:
                return out
        if self.prefill_pace_tokens is not None:
            out = pace_prefill(req, out, self.prefill_pace_tokens)
        return out

    def pick(self, view: SchedulerView, req: RequestState, pods: Sequence[PodState]) -> PodState | None:
        cands = self.candidates(view, req, pods)
        if not cands:
            return None
        if len(cands) == 1:  # scores cannot change the pick
            return cands[0]
        totals: list[float] | None = None
        for name, weight in self.scorers:
            if weight == 0:
                continue
            scores = SCORERS[name](view, req, cands)
            if len(scores) != len(cands):
                raise ValueError(f"scorer {name} gave {len(scores)} scores for {len(cands)} pods")
            if weight != 1:
                scores = [weight * s for s in scores]
            totals = scores if totals is None else list(map(operator.add, totals, scores))
        return PICKERS[self.picker](req, cands, totals or [0.0] * len(cands))


class Tentative:
    """Pod states updated as a policy places requests within one decision call."""

    def __init__(self, pods: Sequence[PodState]) -> None:
        self.pods = list(pods)
        self._index: dict[str, int] | None = None  # built on the first placement
        self._open: dict[int, int] = {}  # lookahead -> free_slots(lookahead), kept up to date by place()

    def place(self, req: RequestState, pod: PodState, expected_tokens: float | None = None) -> None:
        if self._index is None:
            self._index = {p.pod_id: i for i, p in enumerate(self.pods)}
        i = self._index[pod.pod_id]
        cur = self.pods[i]
        tokens = expected_tokens if expected_tokens is not None else req.expected_remaining_tokens()
        per_token = (
            cur.est_remaining_s / cur.est_remaining_tokens if cur.est_remaining_tokens > 0 else FALLBACK_S_PER_TOKEN
        )
        self.pods[i] = replace(
            cur,
            running=cur.running + 1 if cur.free_slots > 0 else cur.running,
            waiting=cur.waiting if cur.free_slots > 0 else cur.waiting + 1,
            kv_used_tokens=cur.kv_used_tokens + _kv_need(req),
            pending_prefill_tokens=cur.pending_prefill_tokens + max(0, req.context_tokens - prefix_hit_tokens(req, cur)),
            est_remaining_tokens=cur.est_remaining_tokens + tokens,
            est_remaining_s=cur.est_remaining_s
            + tokens * per_token
            + req.context_tokens * cur.recompute_s_per_token,
        )
        if cur.healthy:
            new = self.pods[i]
            for lookahead in self._open:
                self._open[lookahead] += open_slots(new, lookahead) - open_slots(cur, lookahead)

    def free_slots(self, lookahead: int = 0) -> int:
        """Open slots on the healthy pods. A policy asks before each placement, so the total is
        counted once and then updated by `place`, not recounted over every pod."""
        total = self._open.get(lookahead)
        if total is None:
            total = self._open[lookahead] = sum(open_slots(p, lookahead) for p in self.pods if p.healthy)
        return total
