"""Every policy, table-driven, on hand-built views."""

from __future__ import annotations

import random

import pytest

from llmfleet.core.scheduling import ALL_REMAINING, Assignment, Preempt
from llmfleet.policies.base import overtaken_through
from llmfleet.policies.registry import POLICIES, make_policy

from .views import placed, pod, req, view

ALL = ALL_REMAINING


# ------------------------------------------------------------------------------ fcfs-rr
@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        ([pod("a"), pod("b")], ["a", "b", "a", "b", "a"]),
        ([pod("a"), pod("b", healthy=False), pod("c")], ["a", "c", "a", "c", "a"]),
        ([pod("a", running=4, waiting=9)], ["a"] * 5),  # never holds back: the engine queues
        ([pod("a", healthy=False)], []),
    ],
)
def test_fcfs_rr(pods, expected) -> None:
    queue = [req(f"r{i}", i) for i in range(5)]
    got = placed(make_policy("fcfs-rr").decide(view(queue, pods)))
    assert [p for _, p, _ in got] == expected
    assert all(m == ALL for _, _, m in got)
    assert [r for r, _, _ in got] == [f"r{i}" for i in range(len(expected))]


# ------------------------------------------------------------------------------ least-load
@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        # r0 -> b (empty); then b has 1 vs a 2: r1 -> b; tie at 2 each: r2 rotates by seq (2 % 2 -> a).
        ([pod("a", running=2), pod("b")], ["b", "b", "a"]),
        ([pod("a", running=1, kv_used=90_000), pod("b", running=1)], ["b", "a", "b"]),
        ([pod("a", healthy=False), pod("b", running=9)], ["b", "b", "b"]),
    ],
)
def test_least_load(pods, expected) -> None:
    queue = [req(f"r{i}", i) for i in range(3)]
    got = placed(make_policy("least-load").decide(view(queue, pods)))
    assert [p for _, p, _ in got] == expected


# ------------------------------------------------------------------------------ prefix
@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        ([pod("a"), pod("b", cached=frozenset({1, 2, 3}))], "b"),
        ([pod("a", cached=frozenset({1})), pod("b", cached=frozenset({1, 2}))], "b"),
        # llm-d's queue scorer reads the engine's *waiting* queue: 3*(2/3) + 2*1 beats 3*1 + 2*0
        ([pod("a", cached=frozenset({1, 2})), pod("b", waiting=5, cached=frozenset({1, 2, 3}))], "a"),
        # running requests are not queueing, so they do not count against b (only KV would)
        ([pod("a", cached=frozenset({1, 2})), pod("b", running=3, cached=frozenset({1, 2, 3}))], "b"),
        ([pod("a", cached=frozenset({2, 3})), pod("b", waiting=1)], "a"),  # no leading match: load decides
        ([pod("a", kv_used=60_000), pod("b", kv_used=10_000)], "b"),  # KV-cache utilisation, weight 2
    ],
)
def test_llm_d(pods, expected) -> None:
    got = placed(make_policy("llm-d").decide(view([req("r", 0, hash_ids=(1, 2, 3))], pods)))
    assert got == [("r", expected, ALL)]


@pytest.mark.parametrize(
    ("prompt", "pods", "expected"),
    [
        # cost = uncached prefill blocks + active decode blocks (+ the request's own, the same everywhere)
        (1536, [pod("a", kv_used=16 * 50), pod("b", kv_used=16 * 10)], "b"),
        # a caches two 512-token blocks: 32 fewer prefill blocks outweigh 30 more active ones
        (1536, [pod("a", kv_used=16 * 40, cached=frozenset({1, 2})), pod("b", kv_used=16 * 10)], "a"),
        # ... but not 80 more active ones
        (1536, [pod("a", kv_used=16 * 90, cached=frozenset({1, 2})), pod("b", kv_used=16 * 10)], "b"),
        # queue depth alone does not enter Dynamo's cost
        (1536, [pod("a", waiting=9), pod("b", kv_used=16 * 1)], "a"),
    ],
)
def test_dynamo_kv_router_cost(prompt, pods, expected) -> None:
    got = placed(make_policy("dynamo").decide(view([req("r", 0, prompt=prompt, hash_ids=(1, 2, 3))], pods)))
    assert got == [("r", expected, ALL)]


# ------------------------------------------------------------------------------ sls / scls
@pytest.mark.parametrize(
    ("name", "pods", "prompts", "expected"),
    [
        # sls: only idle pods, up to max_running each, run to completion
        (
            "sls",
            [pod("a", max_running=2), pod("b", running=1)],
            [10, 10, 10],
            [("r0", "a", ALL), ("r1", "a", ALL)],
        ),
        (
            "sls",
            [pod("a", max_running=2), pod("b", max_running=2)],
            [10, 10, 10],
            [("r0", "a", ALL), ("r1", "a", ALL), ("r2", "b", ALL)],
        ),
        ("sls", [pod("a", waiting=1)], [10], []),
        # scls: context + S must fit: (300 + 128) * 2 = 856 <= 1000 < 3 * 428
        (
            "scls",
            [pod("a", kv_cap=1000), pod("b", kv_cap=1000)],
            [300, 300, 300],
            [("r0", "a", 128), ("r1", "a", 128), ("r2", "b", 128)],
        ),
        # max-min: the idle pod with the least remaining work gets the first batch
        (
            "scls",
            [pod("a", est_s=5.0, max_running=1), pod("b", est_s=1.0, max_running=1)],
            [10, 10],
            [("r0", "b", 128), ("r1", "a", 128)],
        ),
    ],
)
def test_static_batching(name, pods, prompts, expected) -> None:
    queue = [req(f"r{i}", i, prompt=p) for i, p in enumerate(prompts)]
    got = placed(make_policy(name).decide(view(queue, pods)))
    assert sorted(got) == sorted(expected)


def test_scls_uses_the_configured_slice_length() -> None:
    got = placed(make_policy("scls", slice_tokens=32).decide(view([req("r", 0)], [pod("a")])))
    assert got == [("r", "a", 32)]
    # slice-only policies fall back to the one documented S when the config sets none
    assert placed(make_policy("scls").decide(view([req("r", 0)], [pod("a")]))) == [("r", "a", 128)]


# ------------------------------------------------------------------------------ ltr
LTR_QUEUE = [
    req("long", 0, score=3.0, arrival=0.0),
    req("short", 1, score=-1.0, arrival=1.0),
    req("mid", 2, score=0.5, arrival=2.0),
]


@pytest.mark.parametrize(
    ("now", "pods", "expected"),
    [
        (10.0, [pod("a", running=3)], ["short"]),  # one free slot: best predicted rank
        (10.0, [pod("a", running=2)], ["short", "mid"]),
        (10.0, [pod("a", running=4)], []),  # holds the queue while no pod can start anything
        (31.0, [pod("a", running=3)], ["long"]),  # waited > 30 s: promoted by the starvation guard
        (32.0, [pod("a", running=2)], ["long", "short"]),  # arrival 1.0 is exactly 31 s ago... also starved
    ],
)
def test_ltr(now, pods, expected) -> None:
    got = placed(make_policy("ltr", starvation_bound_seconds=30).decide(view(LTR_QUEUE, pods, now=now)))
    assert [r for r, _, _ in got] == expected
    assert all(m == ALL for _, _, m in got)


# ------------------------------------------------------------------------------ oracle-srpt
def test_oracle_srpt_orders_by_true_remaining_and_slices() -> None:
    queue = [req("a", 0, true_out=500), req("b", 1, true_out=300, generated=250), req("c", 2, true_out=100)]
    got = placed(make_policy("oracle-srpt", slice_tokens=64).decide(view(queue, [pod("p", running=2)])))
    assert got == [("b", "p", 64), ("c", "p", 64)]
    with pytest.raises(ValueError, match="true output"):
        make_policy("oracle-srpt").decide(view([req("x", 0)], [pod("p")]))


def test_oracle_srpt_prefers_the_pod_holding_the_kv() -> None:
    queue = [req("a", 0, true_out=500, generated=128, pod="q")]
    got = placed(make_policy("oracle-srpt").decide(view(queue, [pod("p"), pod("q", running=1)])))
    assert got == [("a", "q", 128)]


# ------------------------------------------------------------------------------ alise
def test_alise_orders_by_estimated_remaining_time_with_aging() -> None:
    queue = [req("old-long", 0, expected=400, arrival=0.0), req("new-short", 1, expected=20, arrival=99.0)]
    young = placed(make_policy("alise").decide(view(queue, [pod("p", running=3)], now=100.0)))
    assert [r for r, _, _ in young] == ["new-short"]
    # with strong aging the old request wins
    from llmfleet.policies.alise import Alise

    aged = placed(Alise(aging=1.0).decide(view(queue, [pod("p", running=3)], now=100.0)))
    assert [r for r, _, _ in aged] == ["old-long"]


@pytest.mark.parametrize(
    ("victim_expected", "preempted"),
    [
        (5000, True),  # far worse than the queued head: its KV is dropped, it resumes later
        (30, False),  # the running request is not much worse: no preemption
    ],
)
def test_alise_preempts_the_worst_running_request_when_full(victim_expected, preempted) -> None:
    running = [
        req("fine", 0, expected=20, pod="p", arrival=0.0),
        req("victim", 1, expected=victim_expected, pod="p", arrival=0.0),
    ]
    queue = [req("short", 2, expected=10, arrival=0.0)]
    pods = [pod("p", running=2, max_running=2)]
    got = make_policy("alise").decide(view(queue, pods, running=running, now=0.0))
    preempts = [d for d in got if isinstance(d, Preempt)]
    assert not [d for d in got if isinstance(d, Assignment)]
    assert preempts == ([Preempt("victim", "p")] if preempted else [])


# ------------------------------------------------------------------------------ l4
def test_l4_routes_by_generated_length_and_cuts_slices_at_group_bounds() -> None:
    pods = [pod("a"), pod("b"), pod("c")]
    # fewer than 64 observations: default bounds 0 / S / 4S with one pod per group
    queue = [req("new", 0), req("grown", 1, generated=200), req("huge", 2, generated=600)]
    l4 = make_policy("l4", length_groups={"auto": {"groups": 3}})
    got = placed(l4.decide(view(queue, pods)))
    assert got == [("new", "a", 128), ("grown", "b", 512 - 200), ("huge", "c", ALL)]


def test_l4_uses_the_configured_ranges_shortest_first_whatever_their_names() -> None:
    # "long" sorts before "short" as text; the ranges, not the names, decide the order.
    groups = {
        "ranges": [
            {"name": "long", "minTokens": 300},
            {"name": "short", "minTokens": 0, "maxTokens": 100},
            {"name": "mid", "minTokens": 100, "maxTokens": 300},
        ]
    }
    pods = [pod("p-long", group="long"), pod("p-short", group="short"), pod("p-mid", group="mid")]
    queue = [req("new", 0), req("grown", 1, generated=150), req("huge", 2, generated=600)]
    got = placed(make_policy("l4", length_groups=groups).decide(view(queue, pods)))
    assert got == [("new", "p-short", 100), ("grown", "p-mid", 150), ("huge", "p-long", ALL)]


def test_l4_partition_balances_observed_load() -> None:
    from llmfleet.policies.l4 import partition

    lengths = [50] * 800 + [400] * 150 + [2000] * 50
    part = partition(lengths, 6)
    assert part.bounds[0] == 0 and list(part.bounds) == sorted(set(part.bounds))
    assert sum(part.pods_per_group) == 6 and all(n >= 1 for n in part.pods_per_group)
    assert part.group_of(0) == 0 and part.group_of(10**6) == len(part.bounds) - 1
    # per-pod load of the heaviest group is at most that of a naive equal split
    from llmfleet.policies.l4 import _load

    bounds = [*part.bounds, float("inf")]
    loads = [
        _load(lengths, bounds[g], bounds[g + 1]) / part.pods_per_group[g] for g in range(len(part.bounds))
    ]
    assert max(loads) <= _load(lengths, 0, float("inf")) / 6 * 1.6
    assert partition(lengths, 1).pods_per_group == (1,)


# ------------------------------------------------------------------------------ llmfleet
@pytest.mark.parametrize(
    ("now", "pods", "expected"),
    [
        (1.0, [pod("a", running=3), pod("b", running=4)], [("short", "a")]),
        (1.0, [pod("a", running=4), pod("b", running=4)], []),
        (100.0, [pod("a", running=3), pod("b", running=4)], [("old", "a")]),  # starvation guard
        # the prefix scorer pulls the request with cached blocks to b
        (
            1.0,
            [pod("a", running=3), pod("b", running=3, cached=frozenset({7}))],
            [("short", "b"), ("mid", "a")],
        ),
    ],
)
def test_llmfleet_default(now, pods, expected) -> None:
    queue = [
        req("old", 0, expected=900, arrival=0.0),
        req("short", 1, expected=10, arrival=0.5, hash_ids=(7,)),
        req("mid", 2, expected=100, arrival=0.6),
    ]
    policy = make_policy("llmfleet", starvation_bound_seconds=60, engine_lookahead=0)
    got = placed(policy.decide(view(queue, pods, now=now)))
    assert [(r, p) for r, p, _ in got] == expected


@pytest.mark.parametrize(
    ("lookahead", "pods", "expected"),
    [
        # full pods take `lookahead` more each, best rank first; the rank is what the engine's
        # priority queue orders by: the guarded request 0, then 1 + remaining tokens
        (1, [pod("a", running=4), pod("b", running=4)], [("old", "a", 0), ("short", "b", 11)]),
        (
            2,
            [pod("a", running=4), pod("b", running=4, waiting=1)],
            [("old", "a", 0), ("short", "b", 11), ("mid", "a", 101)],
        ),
        (1, [pod("a", running=4, waiting=1), pod("b", running=4, waiting=1)], []),  # lookahead used up
        (0, [pod("a", running=4), pod("b", running=3)], [("old", "b", 0)]),  # free slots only
    ],
)
def test_llmfleet_lookahead_queues_in_rank_order(lookahead, pods, expected) -> None:
    queue = [
        req("old", 0, expected=900, arrival=0.0),
        req("short", 1, expected=10, arrival=0.5),
        req("mid", 2, expected=100, arrival=0.6),
    ]
    policy = make_policy("llmfleet", starvation_bound_seconds=60, engine_lookahead=lookahead)
    got = policy.decide(view(queue, pods, now=60.2))
    assert [(d.request_id, d.pod_id, d.rank) for d in got] == expected


def test_llmfleet_guard_never_passes_over_a_starved_request() -> None:
    """Property on hand-built views: whatever the queue, a request past the starvation bound is
    never passed over for one that is not, and starved requests go oldest first."""

    rng = random.Random(3)
    policy = make_policy("llmfleet", starvation_bound_seconds=30, engine_lookahead=0)
    for _ in range(200):
        queue = [
            req(f"r{i}", i, expected=rng.choice([5, 50, 500]), arrival=rng.uniform(0, 100)) for i in range(8)
        ]
        (got,) = placed(policy.decide(view(queue, [pod("a", running=3)], now=100.0)))  # one free slot
        starved = [r for r in queue if r.arrival_s < 70.0]
        if starved:
            assert got[0] == min(starved, key=lambda r: r.arrival_s).request_id
        else:
            assert got[0] == min(queue, key=lambda r: (r.estimate.expected_tokens, r.seq)).request_id


def test_llmfleet_bounds_the_estimate_by_max_tokens() -> None:
    # "capped" looks long to the predictor but the client allows it only 8 tokens: it goes first.
    queue = [req("plain", 0, expected=50), req("capped", 1, expected=500, max_output=8)]
    got = placed(make_policy("llmfleet", engine_lookahead=0).decide(view(queue, [pod("a", running=3)])))
    assert [r for r, _, _ in got] == ["capped"]


def test_llmfleet_ranks_grown_requests_as_longer() -> None:
    # "grown" was predicted short but has already produced 300 tokens: it now ranks behind "fresh".
    queue = [req("grown", 0, expected=20, generated=300), req("fresh", 1, expected=200)]
    got = placed(make_policy("llmfleet", engine_lookahead=0).decide(view(queue, [pod("a", running=3)])))
    assert [r for r, _, _ in got] == ["fresh"]


# ------------------------------------------------------------------------------ all policies
@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_is_pure_and_only_names_known_ids(name: str) -> None:
    queue = [
        req(f"q{i}", i, true_out=50 + i, expected=40.0 + i, generated=i % 2, hash_ids=(i,)) for i in range(6)
    ]
    running = [req("run", 9, true_out=400, expected=300.0, pod="a")]
    v = view(queue, [pod("a", running=1), pod("b")], running=running, now=5.0)
    policy = make_policy(name)
    first = policy.decide(v)
    assert first == policy.decide(v)  # deterministic, no hidden state between calls
    ids = {r.request_id for r in queue}
    assigned = [d.request_id for d in first if isinstance(d, Assignment)]
    assert len(assigned) == len(set(assigned)) and set(assigned) <= ids
    assert {d.pod_id for d in first} <= {"a", "b"}
    assert all(d.request_id == "run" for d in first if isinstance(d, Preempt))


FULL = pod("a", running=4)  # four requests running: one turn is four overtakes


@pytest.mark.parametrize(
    ("seqs", "admitted", "pods", "turns", "expected"),
    [
        ([0, 1, 2], 3, [FULL], 1.0, -1),  # no later arrival left the queue
        ([0, 5], 6, [FULL], 1.0, 0),  # 1-4 left before 0: four times
        ([0, 3], 6, [FULL], 1.0, 0),  # 0 was overtaken by 1, 2, 4, 5; 3 only by 4 and 5
        ([0, 1], 10, [FULL], 1.0, 1),  # both overtaken 8 times
        ([5, 0], 6, [FULL], 1.0, 0),  # 0 was re-queued behind 5: the count ignores queue order
        ([0, 5], 6, [FULL], 2.0, -1),  # 4 overtakes < 2 turns of 4
        ([0, 5], 6, [FULL, pod("b", running=4, healthy=False)], 1.0, 0),  # an unhealthy pod does not count
        ([0, 5], 6, [FULL, pod("b", running=2)], 1.0, -1),  # 4 < 6 running
        ([0, 5], 6, [pod("a", running=2, max_running=64)], 1.0, 0),  # running, not slots: KV may bind first
        ([0, 5], 6, [FULL], None, -1),  # the guard is off
        ([], 6, [FULL], 1.0, -1),
        ([0, 5], 6, [pod("a")], 1.0, -1),  # nothing running: nothing to overtake for
    ],
)
def test_overtaken_through(seqs, admitted, pods, turns, expected) -> None:
    v = view([req(f"r{s}", s) for s in seqs], pods, admitted=admitted)
    assert overtaken_through(v, turns) == expected


@pytest.mark.parametrize(
    ("queued", "admitted", "fraction", "expected"),
    [
        # 0 overtaken by 1-8, one turn is 4: with 2 queued, the turn is the larger bound
        ([0, 9], 10, 0.5, 0),
        # 10 queued (0 and 6-14), 0 overtaken by 1-5: half the queue is 5, and 5 overtakes reach it
        ([0, *range(6, 15)], 15, 0.5, 0),
        # the same with 11 queued (5.5 overtakes needed): 5 do not reach it
        ([0, *range(5, 15)], 16, 0.5, -1),
        ([0, *range(5, 15)], 16, None, 0),  # turns alone: 4 + 1 = 5 overtakes >= 4
        ([0, *range(5, 15)], 16, 0.0, 0),
        ([0, *range(5, 15)], 16, 0.25, 0),  # a quarter of 11 is under one turn
    ],
)
def test_the_overtake_bound_widens_with_the_queue(queued, admitted, fraction, expected) -> None:
    v = view([req(f"r{s}", s) for s in queued], [FULL], admitted=admitted)
    assert overtaken_through(v, 1.0, fraction) == expected


def test_overtaken_through_agrees_with_counting_every_later_arrival() -> None:
    rng = random.Random(5)
    for _ in range(400):
        admitted = rng.randrange(1, 60)
        seqs = rng.sample(range(admitted), rng.randrange(1, admitted + 1))
        turns = rng.choice([0.5, 1.0, 2.0])
        fraction = rng.choice([None, 0.25, 0.5, 1.0])
        v = view([req(f"r{s}", s) for s in seqs], [FULL], admitted=admitted)
        queued = set(seqs)
        limit = max(turns * 4, (fraction or 0.0) * len(seqs))
        overtaken = [s for s in seqs if sum(1 for later in range(s + 1, admitted) if later not in queued) >= limit]
        assert overtaken_through(v, turns, fraction) == max(overtaken, default=-1)


def test_llmfleet_sends_an_often_overtaken_request_ahead_before_its_time_bound() -> None:
    """Long waited 5 s of a 30 s bound, but later arrivals 1-4 started before it: with 3 requests
    running that is more than one turn, and it goes first; with the guard at 2 turns, or off,
    the short request does."""
    queue = [req("long", 0, expected=500, arrival=0.0), req("short", 5, expected=10, arrival=4.9)]
    v = view(queue, [pod("a", running=3)], now=5.0, admitted=6)

    def first(**settings) -> str:
        return placed(make_policy("llmfleet", engine_lookahead=0, **settings).decide(v))[0][0]

    assert first() == "long"
    assert first(starvation_overtake_turns=2.0) == "short"
    assert first(starvation_overtake_turns=None) == "short"
    assert first(starvation_overtake_turns=None, starvation_bound_seconds=4.0) == "long"


def test_llmfleet_keeps_a_deep_queue_ranked() -> None:
    """Ten short requests wait behind "long", which later arrivals 1-4 overtook: more than one
    turn of the 3 running, but under half the queue of 11. By default the short ones keep going
    first; with the bound in turns alone, "long" goes ahead as in arrival order."""
    shorts = [req(f"s{i}", 4 + i, expected=10, arrival=4.0 + 0.01 * i) for i in range(1, 11)]
    v = view([req("long", 0, expected=500, arrival=0.0), *shorts], [pod("a", running=3)], now=5.0, admitted=15)

    def first(**settings) -> str:
        return placed(make_policy("llmfleet", engine_lookahead=0, **settings).decide(v))[0][0]

    assert first() == "s1"
    assert first(starvation_overtake_queue_fraction=None) == "long"
    assert first(starvation_overtake_queue_fraction=0.2) == "long"  # 2.2 < one turn of 3
    assert first(starvation_overtake_turns=None) == "s1"  # the guard is off altogether
