"""Shared building blocks for the queue-ordering policies.

`dispatch_ranked` is the order-then-dispatch skeleton that `ltr`, `llmfleet`, `oracle-srpt` and
`alise` share: the policy supplies a sort key, the skeleton picks the best few queued requests
(only as many as can start now) and places them, in that order, with a routing profile until no
pod can take more. The policy decides the order, the profile decides where.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable
from typing import Any

from llmfleet.core.scheduling import (
    ALL_REMAINING,
    MAX_RANK,
    Assignment,
    Decision,
    RequestState,
    SchedulerView,
)
from llmfleet.policies.routing import RoutingProfile, Tentative

# Hold requests at the dispatcher and only release one when a pod can start it now: the
# queue order then decides who runs next, which an engine's internal FCFS queue would not.
HOLDING = RoutingProfile(
    filters=("healthy", "free-slot", "kv-room"),
    scorers=(("queue", 1.0), ("kv-cache", 1.0), ("affinity", 0.5)),
)


def dispatch_in_order(
    view: SchedulerView,
    ordered: Iterable[RequestState],
    profile: RoutingProfile = HOLDING,
    max_tokens: int | None = None,
    rank: Callable[[RequestState], int] | None = None,
) -> tuple[Decision, ...]:
    """Place requests in the given order; `max_tokens=None` means run to completion. `rank`
    gives each Assignment its place in the engine's own queue (clipped to 0..MAX_RANK)."""
    return _place_in_order(Tentative(view.pods), ordered, profile, max_tokens, rank, view)


def _place_in_order(
    tent: Tentative,
    ordered: Iterable[RequestState],
    profile: RoutingProfile,
    max_tokens: int | None,
    rank: Callable[[RequestState], int] | None,
    view: SchedulerView,
) -> tuple[Decision, ...]:
    out: list[Decision] = []
    holding = "free-slot" in profile.filters
    ordered = list(ordered)
    last = len(ordered) - 1
    for i, req in enumerate(ordered):
        if holding and tent.free_slots(profile.lookahead) == 0:
            break
        pod = profile.pick(view, req, tent.pods)
        if pod is None:
            continue
        if i < last:  # the tally only matters to the requests after this one
            tent.place(req, pod)
        place = min(MAX_RANK, max(0, rank(req))) if rank is not None else 0
        out.append(Assignment(req.request_id, pod.pod_id, max_tokens or ALL_REMAINING, place))
    return tuple(out)


def dispatch_ranked(
    view: SchedulerView,
    key: Callable[[RequestState], Any],
    profile: RoutingProfile = HOLDING,
    max_tokens: int | None = None,
    rank: Callable[[RequestState], int] | None = None,
) -> tuple[Decision, ...]:
    """Start the best-ranked queued requests (lowest `key` first) on pods that can take them now,
    or, with the profile's lookahead, queue them inside the engines in `rank` order."""
    tent = Tentative(view.pods)
    slots = tent.free_slots(profile.lookahead)
    if slots == 0 or not view.queue:
        return ()
    # Only the best few can start now; a partial selection beats sorting a long queue. The
    # margin covers requests that no pod can fit (KV room) being skipped.
    ordered = heapq.nsmallest(slots * 2 + 8, view.queue, key=key)
    return _place_in_order(tent, ordered, profile, max_tokens, rank, view)


def overtaken_through(view: SchedulerView, turns: float | None, queue_fraction: float | None = None) -> int:
    """The highest `seq` of a queued request that later arrivals have overtaken at least `turns`
    times as often as the fleet has requests running, or `queue_fraction` times as often as
    requests are queued if that is more; -1 when none has (or `turns` is None).

    A later arrival overtook a request when it left the queue first (started, or cancelled). The
    count needs no history: `view.admitted` numbers every request densely, so of the requests
    after one, those not queued are exactly the ones that left. The count only grows for older
    requests, so the overtaken ones are exactly those up to one `seq`.

    A turn is what the fleet runs at once: where KV memory, not `max_num_seqs`, limits the batch,
    the running requests, not the slots, say how fast later arrivals start.

    The queue's share keeps a deep queue ranked: with 40 waiting behind 8 running, one turn is 8
    overtakes, which every waiter soon reaches, and the order falls back to arrival order. A
    share of the queue bounds each request's extra wait to that share of an arrival-order wait
    at the current depth (bench/SIM.md, the overtake bound in a deep queue)."""
    queue = view.queue
    n = len(queue)
    if turns is None or not n:
        return -1
    limit = max(turns * sum(p.running for p in view.pods if p.healthy), (queue_fraction or 0.0) * n)
    if limit <= 0 or view.admitted - n < limit:  # fewer requests left the queue than the limit
        return -1
    seqs = sorted([r.seq for r in queue])  # nearly sorted already (enqueue order)
    # The i-th oldest queued was overtaken (admitted - 1 - seq) - (n - 1 - i) times, so it is
    # overtaken enough when seqs[i] - i <= admitted - n - limit; seqs[i] - i never decreases.
    count = bisect.bisect_right(range(n), view.admitted - n - limit, key=lambda i: seqs[i] - i)
    return seqs[count - 1] if count else -1


class RoutedFcfs:
    """The shape of the routing-only baselines (least-load, llm-d, dynamo): every queued request
    goes to a pod at once, in arrival order, where the engine's own FCFS batching runs it to
    completion. Subclasses name themselves and their routing profile; no scheduling setting
    applies to them."""

    name = "routed-fcfs"
    PROFILE: RoutingProfile = RoutingProfile()

    def __init__(self, config: object = None, profile: RoutingProfile | None = None) -> None:
        del config  # routing only
        self.profile = profile or self.PROFILE

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        return dispatch_in_order(view, view.queue, self.profile)
