"""How good is an order? Rank correlations and a toy single-server SJF queue.

* `kendall_tau`: tau-b over all held-out prompts.
* `kendall_tau_batches`: mean tau within random batches of 32 (the learning-to-rank paper's
  setting: a scheduler only ever orders the requests waiting together).
* `sjf_queue_latency`: mean latency of a non-preemptive single server whose service time is the
  true output length, serving the waiting request with the smallest key first. Keys can be the
  ranker's scores, the true lengths (oracle SJF), arrival order (FCFS) or prompt length.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike


def kendall_tau(scores: ArrayLike, truth: ArrayLike) -> float:
    from scipy.stats import kendalltau

    s, t = np.asarray(scores, float), np.asarray(truth, float)
    if len(s) < 2 or np.all(s == s[0]) or np.all(t == t[0]):
        return 0.0  # a constant order carries no ranking information (the FCFS baseline)
    return float(kendalltau(s, t).statistic)


def spearman(scores: ArrayLike, truth: ArrayLike) -> float:
    from scipy.stats import spearmanr

    s, t = np.asarray(scores, float), np.asarray(truth, float)
    if len(s) < 2 or np.all(s == s[0]) or np.all(t == t[0]):
        return 0.0
    return float(spearmanr(s, t).statistic)


def kendall_tau_batches(
    scores: ArrayLike, truth: ArrayLike, batch: int = 32, repeats: int = 20, seed: int = 0
) -> float:
    """Mean Kendall tau within random disjoint batches of `batch` requests."""
    s, t = np.asarray(scores, float), np.asarray(truth, float)
    n = len(s)
    if n < batch:
        return kendall_tau(s, t)
    rng = np.random.default_rng(seed)
    taus: list[float] = []
    for _ in range(repeats):
        order = rng.permutation(n)
        for start in range(0, n - batch + 1, batch):
            idx = order[start : start + batch]
            taus.append(kendall_tau(s[idx], t[idx]))
    return float(np.mean(taus))


def _serve(arrivals: np.ndarray, service: np.ndarray, keys: np.ndarray) -> float:
    """Mean latency (finish - arrival) of a non-preemptive single server, smallest key first."""
    order = np.argsort(arrivals, kind="stable")
    waiting: list[tuple[float, int, int]] = []
    now = 0.0
    i = 0
    total = 0.0
    n = len(order)
    served = 0
    while served < n:
        while i < n and arrivals[order[i]] <= now:
            r = int(order[i])
            heapq.heappush(waiting, (float(keys[r]), i, r))
            i += 1
        if not waiting:
            now = float(arrivals[order[i]])
            continue
        _, _, r = heapq.heappop(waiting)
        now += float(service[r])
        total += now - float(arrivals[r])
        served += 1
    return total / n


def sjf_queue_latency(
    keys_by_name: Mapping[str, ArrayLike],
    true_tokens: ArrayLike,
    load: float | None = 0.9,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Mean latency per ordering, in units of one token's decode time.

    `load` is the server utilisation of Poisson arrivals; `None` means every request arrives at
    time zero (a single burst). "fcfs" (arrival order) and "oracle" (true length) are added.
    """
    service = np.maximum(np.asarray(true_tokens, float), 1.0)
    n = len(service)
    rng = np.random.default_rng(seed)
    names = ["fcfs", "oracle", *keys_by_name]
    sums = dict.fromkeys(names, 0.0)
    for _ in range(repeats):
        perm = rng.permutation(n)  # a random arrival order, shared by every ordering
        if load is None:
            arrivals = np.zeros(n)
        else:
            gaps = rng.exponential(service.mean() / load, size=n)
            arrivals = np.empty(n)
            arrivals[perm] = np.cumsum(gaps)
        fcfs_key = np.empty(n)
        fcfs_key[perm] = np.arange(n)
        sums["fcfs"] += _serve(arrivals, service, fcfs_key)
        sums["oracle"] += _serve(arrivals, service, service)
        for name, keys in keys_by_name.items():
            sums[name] += _serve(arrivals, service, np.asarray(keys, float))
    return {name: total / repeats for name, total in sums.items()}
