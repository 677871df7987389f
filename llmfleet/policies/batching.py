"""Batch formation shared by the static-batching policies (`sls`, `scls`).

A batch only ever goes to an *idle* pod and, because nothing joins it until every member has
left, the pod serves it as one static batch. Batches are filled in queue order up to the
engine's `max_running` and, with `reserve_tokens`, until the KV bound ``sum(context +
reserve) <= capacity`` is reached (SCLS's memory-aware batch size). Max-min offloading: the
first (fullest) batch goes to the idle pod with the least estimated remaining work.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmfleet.core.scheduling import Assignment, Decision, PodState, RequestState, SchedulerView


def form_batches(
    view: SchedulerView,
    ordered: Sequence[RequestState],
    max_tokens: int,
    reserve_tokens: int | None,
) -> tuple[Decision, ...]:
    idle = sorted(
        (p for p in view.pods if p.healthy and p.running == 0 and p.waiting == 0),
        key=lambda p: (p.est_remaining_s, p.pod_id),
    )
    out: list[Decision] = []
    pos = 0
    for pod in idle:
        batch, kv = _fill(pod, ordered, pos, reserve_tokens)
        if not batch:
            break
        pos += len(batch)
        out.extend(Assignment(r.request_id, pod.pod_id, max_tokens) for r in batch)
    return tuple(out)


def _fill(
    pod: PodState, ordered: Sequence[RequestState], start: int, reserve: int | None
) -> tuple[list[RequestState], int]:
    batch: list[RequestState] = []
    kv = 0
    for req in ordered[start:]:
        if len(batch) >= pod.max_running:
            break
        need = req.context_tokens + (reserve if reserve is not None else 1)
        if batch and kv + need > pod.kv_capacity_tokens:
            break
        batch.append(req)
        kv += need
    return batch, kv
