"""Offered load as a fraction of what the fleet serves: the arrival rate from a measured capacity.

A fixed arrival rate means a different load on every run of a shared machine: its speed drifts
by up to 2x within minutes, and at a fixed 3.0 requests/s the same window left `fcfs-rr` queueing
for seconds in one run and hardly at all in another (bench/DATAPLANE.md, "Targets still
missed"). A comparison of schedulers is a comparison at a load where requests queue, so the demo
and the e2e benchmark can instead measure the fleet's capacity right before the replays (a burst
that keeps every slot busy) and set the rate to a chosen fraction of it. Measured on the 2-core
box, this did not make `fcfs-rr` queue in every replay either: an open-loop trace sustains only
85-95% of the burst's rate, and the machine's speed moves between the burst and the replays.

The other way, `--queue-share`, aims at the regime itself: the demo replays the window under
`fcfs-rr` and raises or lowers the rate until `fcfs-rr`'s requests spend about the chosen share of
their latency before their first token (`queue_share`, `next_rate`). Those replays only find the
rate; the policies, `fcfs-rr` included, are then replayed afresh at it, so the baseline compared
is not the one picked for having queued. The try at the chosen rate is kept as the baseline's
earlier replay, beside its own: their ratio gauges the machine's drift during the comparison
(`llmfleet.demo.report.drift_note`). That try was picked for its share, but over the 17 searches
committed in bench/results its share averaged 0.38 and the fresh `fcfs-rr` replay's 0.37: the
pick is small beside the drift (0.44 against 0.76 in one demo run).

Pure functions over replay outcomes, so that they are tested without a fleet.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmfleet.demo.replay import Outcome
from llmfleet.demo.workload import WorkloadRequest


def saturated_throughput(outcomes: Sequence[Outcome], slots: int) -> float:
    """Output tokens per second while every slot was busy, from a burst sent all at once.

    The burst keeps all `slots` busy until fewer than `slots` requests are left unfinished, so
    the span measured runs from the burst's start to the moment the (n - slots + 1)-th request
    finished; a request's tokens are taken to come evenly between its first token and its finish
    (each slice streams as it decodes). Raises ValueError when the burst cannot fill the slots or
    a request failed, since a capacity measured that way would be wrong.
    """
    if slots < 1:
        raise ValueError("slots must be at least 1")
    if any(not o.ok or o.first_token_s is None or o.finish_s is None for o in outcomes):
        raise ValueError("a request of the capacity burst failed; its capacity is unknown")
    if len(outcomes) <= slots:
        raise ValueError(f"a burst of {len(outcomes)} requests cannot keep {slots} slots busy")
    finishes = sorted(o.finish_s for o in outcomes if o.finish_s is not None)
    start = min(o.arrival_s for o in outcomes)
    end = finishes[len(outcomes) - slots]
    if end <= start:
        raise ValueError("the capacity burst finished before it started")
    tokens = 0.0
    for o in outcomes:
        assert o.first_token_s is not None and o.finish_s is not None
        if o.finish_s <= end:
            tokens += o.tokens
        elif o.first_token_s < end:  # part of its tokens came before the span ended
            tokens += o.tokens * (end - o.first_token_s) / (o.finish_s - o.first_token_s)
    return tokens / (end - start)


MAX_LOAD = 2.0  # twice the capacity: past it a replay measures only its growing backlog


def check_load(load: float) -> float:
    """`load` if it is a usable fraction of capacity, else ValueError saying what is: checked by
    the CLIs before a fleet starts, and again where the rate is computed."""
    if not 0 < load <= MAX_LOAD:
        raise ValueError(f"load is a fraction of the fleet's capacity, in (0, {MAX_LOAD:g}]; got {load:g}")
    return load


def rate_for_load(load: float, capacity_tok_s: float, workload: Sequence[WorkloadRequest]) -> float:
    """Requests per second that offer `load` times `capacity_tok_s` output tokens per second,
    given the workload's mean answer length."""
    check_load(load)
    if capacity_tok_s <= 0 or not workload:
        raise ValueError("need a positive capacity and a workload")
    mean_tokens = sum(r.output_tokens for r in workload) / len(workload)
    return load * capacity_tok_s / mean_tokens


QUEUE_SHARE_TOLERANCE = 0.1  # a share within this of the target is close enough: stop searching
MAX_QUEUE_REPLAYS = 4  # replays spent finding the rate; then the closest one tried is used


def check_queue_share(share: float) -> float:
    """`share` if it is a usable target (a fraction of latency spent before the first token)."""
    if not 0 < share < 1:
        raise ValueError(f"queue-share is the fraction of fcfs-rr's latency spent before the first token, in (0, 1); got {share:g}")
    return share


def check_rate_options(load: float | None, queue_share: float | None) -> None:
    """The one check of the two ways to set the rate from the fleet (they exclude each other),
    for the CLIs before a fleet starts and for `run_demo`; ValueError says what is wrong, worded to
    follow a `--` (`--load and --queue-share ...`, `--load is ...`)."""
    if load is not None and queue_share is not None:
        raise ValueError("load and --queue-share each set the rate; give one")
    if load is not None:
        check_load(load)
    if queue_share is not None:
        check_queue_share(queue_share)


def queue_share(outcomes: Sequence[Outcome]) -> float:
    """The share of the requests' mean latency that came before their first token: the wait any
    order of the requests can shorten (ValueError when no request completed)."""
    done = [o for o in outcomes if o.ok and o.first_token_s is not None and o.finish_s is not None]
    if not done:
        raise ValueError("no request completed; the queue share is unknown")
    ttft = sum(o.first_token_s - o.arrival_s for o in done if o.first_token_s is not None)
    latency = sum(o.finish_s - o.arrival_s for o in done if o.finish_s is not None)
    return ttft / latency if latency > 0 else 0.0


def next_rate(tried: Sequence[tuple[float, float]], target: float, tolerance: float = QUEUE_SHARE_TOLERANCE) -> float | None:
    """The next rate to try, given the (rate, queue share) pairs tried so far; None once the last
    one is within `tolerance` of `target`. Once the target is bracketed, the geometric middle of
    the closest rates either side; before that, a step of 20% (8% when within twice the
    tolerance), since the queue grows steeply with the rate near capacity."""
    check_queue_share(target)
    if not tried:
        raise ValueError("try a rate first")
    rate, share = tried[-1]
    if abs(share - target) <= tolerance:
        return None
    low = [r for r, s in tried if s < target - tolerance]
    high = [r for r, s in tried if s > target + tolerance]
    if low and high and max(low) < min(high):
        return (max(low) * min(high)) ** 0.5
    step = 1.08 if abs(share - target) <= 2 * tolerance else 1.2
    return rate * step if share < target else rate / step


def closest_rate(tried: Sequence[tuple[float, float]], target: float) -> float:
    """The rate whose share came closest to `target`, when the search ran out of replays."""
    return min(tried, key=lambda t: abs(t[1] - target))[0]
