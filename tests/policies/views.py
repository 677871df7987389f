"""Hand-built scheduler views for the policy tables."""

from __future__ import annotations

from llmfleet.core.prediction import LengthEstimate
from llmfleet.core.scheduling import PodState, RequestState, SchedulerView


def req(
    rid: str,
    seq: int,
    *,
    prompt: int = 100,
    generated: int = 0,
    true_out: int | None = None,
    expected: float | None = None,
    score: float | None = None,
    arrival: float = 0.0,
    hash_ids: tuple[int, ...] = (),
    pod: str | None = None,
    max_output: int | None = None,
) -> RequestState:
    est = None
    if expected is not None or score is not None:
        e = expected if expected is not None else 100.0
        est = LengthEstimate(score=score if score is not None else e, expected_tokens=e, upper_tokens=2 * e)
    return RequestState(
        request_id=rid,
        seq=seq,
        arrival_s=arrival,
        prompt_tokens=prompt,
        generated_tokens=generated,
        true_output_tokens=true_out,
        max_output_tokens=max_output,
        estimate=est,
        hash_ids=hash_ids,
        pod_id=pod,
        enqueued_s=arrival,
    )


def pod(
    pid: str,
    *,
    running: int = 0,
    waiting: int = 0,
    max_running: int = 4,
    kv_cap: int = 100_000,
    kv_used: int = 0,
    est_s: float = 0.0,
    cached: frozenset[int] = frozenset(),
    group: str | None = None,
    healthy: bool = True,
    recompute: float = 1e-4,
    prefilling: int = 0,
    block: int = 512,
) -> PodState:
    return PodState(
        pod_id=pid,
        group=group,
        kv_capacity_tokens=kv_cap,
        kv_used_tokens=kv_used,
        max_running=max_running,
        running=running,
        waiting=waiting,
        est_remaining_s=est_s,
        est_remaining_tokens=est_s / 0.03,
        cached_prefixes=cached,
        recompute_s_per_token=recompute,
        healthy=healthy,
        pending_prefill_tokens=prefilling,
        prefix_block_tokens=block,
    )


def view(queue=(), pods=(), running=(), now: float = 0.0, recent=(), admitted: int | None = None) -> SchedulerView:
    """`admitted` defaults to one past the highest seq given: no later arrival has left the queue."""
    if admitted is None:
        admitted = 1 + max((r.seq for r in (*queue, *running)), default=-1)
    return SchedulerView(
        now=now,
        queue=tuple(queue),
        running=tuple(running),
        pods=tuple(pods),
        recent_output_tokens=tuple(recent),
        completed=len(recent),
        admitted=admitted,
    )


def placed(decisions) -> list[tuple[str, str, int]]:
    return [(d.request_id, d.pod_id, d.max_tokens) for d in decisions]
