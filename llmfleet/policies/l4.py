"""`l4`: length-specialised pod groups.

The pods are split into contiguous groups, each serving one range of *generated-so-far*
lengths. With `lengthGroups.ranges` the ranges are the configured ones, shortest first, and
pods belong to the group their `group` label names; with `lengthGroups.auto` (or none) they are
learned. Every request starts in the shortest group; its slice ends exactly at its group's
upper bound, so a request that outgrows its range comes back and migrates to the next group
(re-prefilling there). The ranges and how many pods each gets come from a dynamic program
over the recently observed output lengths: it minimises the largest per-pod decode load,
where a group's load is the tokens requests generate while inside its range. Within a group
requests go out at once, FCFS, to the least-loaded pod.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from llmfleet.core.config import SchedulingFields
from llmfleet.core.scheduling import ALL_REMAINING, Assignment, Decision, PodState, SchedulerView
from llmfleet.policies.routing import RoutingProfile, Tentative

PROFILE = RoutingProfile(filters=("healthy",), scorers=(("queue", 1.0), ("kv-cache", 1.0)))
_QUANTILES = tuple(q / 100 for q in range(10, 100, 5)) + (0.97, 0.99)


@dataclass(frozen=True)
class Partition:
    bounds: tuple[int, ...]  # lower bounds of each group; group g covers [bounds[g], bounds[g+1])
    pods_per_group: tuple[int, ...]

    def group_of(self, generated: int) -> int:
        g = 0
        while g + 1 < len(self.bounds) and generated >= self.bounds[g + 1]:
            g += 1
        return g

    def upper(self, g: int) -> int | None:
        return self.bounds[g + 1] if g + 1 < len(self.bounds) else None


# One prefill token costs about this many decode tokens of engine time (llama2-70b TP8 H100:
# ~0.09 ms per prefill token at scale vs ~0.7 ms per decode token in a batch of 64).
PREFILL_TOKEN_WEIGHT = 0.13
MEAN_PROMPT_TOKENS = 1000


def _load(lengths: Sequence[int], lo: int, hi: float, entry_tokens: float = 0.0) -> float:
    """Decode tokens generated inside [lo, hi), plus the (re-)prefill of every request entering."""
    inside = [n for n in lengths if n > lo]
    return float(sum(min(n, hi) - lo for n in inside)) + PREFILL_TOKEN_WEIGHT * (entry_tokens + lo) * len(
        inside
    )


def partition(
    lengths: Sequence[int],
    n_pods: int,
    max_groups: int = 3,
    default_slice: int = 128,
    mean_prompt: float = MEAN_PROMPT_TOKENS,
) -> Partition:
    """DP over quantile cut points: minimise max(group load / pods in group).

    A group's load counts the decode tokens generated inside its range and the prefill of every
    request entering it (a migration re-prefills prompt + generated tokens), so the DP only
    adds a boundary where the balance it buys outweighs the re-prefills it causes.
    """
    groups = max(1, min(max_groups, n_pods))
    if groups == 1:
        return Partition((0,), (n_pods,))
    if len(lengths) < 64:
        cuts = [default_slice * (4**i) for i in range(groups - 1)]
        base, extra = divmod(n_pods, groups)
        return Partition((0, *cuts), tuple(base + (1 if g < extra else 0) for g in range(groups)))
    data = sorted(lengths)
    cand = sorted({data[min(len(data) - 1, int(q * len(data)))] for q in _QUANTILES} - {0})
    points = [0, *cand, math.inf]
    K = len(points)
    # best[j][m][g]: min max-load covering points[0..j] with m pods in g groups
    INF = math.inf
    best: dict[tuple[int, int, int], tuple[float, tuple[int, int, int] | None, int]] = {
        (0, 0, 0): (0.0, None, 0)
    }
    for j in range(1, K):
        for i in range(j):
            seg = _load(data, int(points[i]), points[j], mean_prompt)
            for (pi, pm, pg), (val, _, _) in list(best.items()):
                if pi != i or pg >= groups:
                    continue
                for q in range(1, n_pods - pm + 1):
                    state = (j, pm + q, pg + 1)
                    cost = max(val, seg / q)
                    if cost < best.get(state, (INF, None, 0))[0]:
                        best[state] = (cost, (pi, pm, pg), q)
    finals = [k for k in best if k[0] == K - 1 and k[1] == n_pods and k[2] == groups]
    if not finals:
        return Partition((0,), (n_pods,))
    key: tuple[int, int, int] | None = min(finals, key=lambda k: best[k][0])
    bounds: list[int] = []
    counts: list[int] = []
    while key is not None and key[0] > 0:
        _, prev, q = best[key]
        counts.append(q)
        assert prev is not None
        bounds.append(int(points[prev[0]]))
        key = prev
    return Partition(tuple(reversed(bounds)), tuple(reversed(counts)))


class LengthGroups:
    name = "l4"

    def __init__(self, config: SchedulingFields | None = None, profile: RoutingProfile = PROFILE) -> None:
        config = config or SchedulingFields()
        groups = config.length_groups
        # Configured ranges, shortest first: (group names, lower bounds); None means learn them.
        self.fixed: tuple[tuple[str, ...], tuple[int, ...]] | None = None
        if groups is not None and groups.ranges:
            ordered = groups.ordered()
            self.fixed = (tuple(r.name for r in ordered), tuple(r.min_tokens for r in ordered))
        self.max_groups = groups.auto.groups if groups is not None and groups.auto is not None else 2
        self.default_slice = config.slice_or_fallback
        self.profile = profile
        self._memo: dict[tuple[int, int], Partition] = {}

    def current_partition(self, view: SchedulerView) -> Partition:
        if self.fixed is not None:
            names, bounds = self.fixed
            return Partition(bounds, tuple(sum(1 for p in view.pods if p.group == n) for n in names))
        # Pure memoisation: the partition is a function of the observed window, refreshed
        # every 256 completions.
        key = (len(view.pods), view.completed // 256)
        if key not in self._memo:
            self._memo.clear()
            self._memo[key] = partition(
                view.recent_output_tokens, len(view.pods), self.max_groups, self.default_slice
            )
        return self._memo[key]

    def group_pods(self, view: SchedulerView, part: Partition) -> list[list[PodState]]:
        if self.fixed is not None:
            return [[p for p in view.pods if p.group == n] for n in self.fixed[0]]
        # Auto groups are labelled g0, g1, ...: order them by number, not as text (g10 after g9).
        named = sorted({p.group for p in view.pods if p.group is not None}, key=lambda g: (len(g), g))
        if named and len(named) == len(part.bounds):
            return [[p for p in view.pods if p.group == g] for g in named]
        out, start = [], 0
        for n in part.pods_per_group:
            out.append(list(view.pods[start : start + n]))
            start += n
        return out

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        if not view.queue:
            return ()
        part = self.current_partition(view)
        members = self.group_pods(view, part)
        tent = Tentative(view.pods)
        out: list[Decision] = []
        for req in view.queue:
            g = part.group_of(req.generated_tokens)
            # A group with no pod (none labelled for it yet) must not strand its requests.
            ids = {p.pod_id for p in members[g]} or {p.pod_id for p in view.pods}
            pod = self.profile.pick(view, req, [p for p in tent.pods if p.pod_id in ids])
            if pod is None:
                continue
            upper = part.upper(g)
            max_tokens = ALL_REMAINING if upper is None else max(1, upper - req.generated_tokens)
            tent.place(req, pod)
            out.append(Assignment(req.request_id, pod.pod_id, max_tokens))
        return tuple(out)
