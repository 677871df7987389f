"""Filters, scorers and pickers of the endpoint-picker pipeline, each in a table."""

from __future__ import annotations

import pytest

from llmfleet.policies.routing import FILTERS, PICKERS, SCORERS, RoutingProfile, Tentative, pace_prefill

from .views import pod, req, view

A = pod("a", running=1, waiting=0, kv_used=20_000)
B = pod("b", running=4, waiting=2, kv_used=90_000, cached=frozenset({1, 2}))
C = pod("c", running=0, waiting=0, healthy=False, cached=frozenset({1, 2, 3}))


@pytest.mark.parametrize(
    ("name", "request_", "expected"),
    [
        ("healthy", req("r", 0), ["a", "b"]),
        ("free-slot", req("r", 0), ["a", "c"]),
        ("kv-room", req("r", 0, prompt=20_000), ["a", "c"]),
        ("kv-room", req("r", 0, prompt=5_000), ["a", "b", "c"]),
        ("idle", req("r", 0), ["c"]),
        ("sticky", req("r", 0), ["a", "b", "c"]),
        ("sticky", req("r", 0, pod="b"), ["b"]),
    ],
)
def test_filters(name, request_, expected) -> None:
    got = FILTERS[name](view(), request_, [A, B, C])
    assert [p.pod_id for p in got] == expected


@pytest.mark.parametrize(
    ("name", "request_", "expected"),
    [
        ("queue", req("r", 0), [5 / 6, 0.0, 1.0]),
        ("kv-cache", req("r", 0), [0.8, 0.1, 1.0]),
        ("prefix", req("r", 0, hash_ids=(1, 2, 3, 4)), [0.0, 0.5, 0.75]),
        ("prefix", req("r", 0, hash_ids=(2, 1)), [0.0, 1.0, 1.0]),
        ("prefix", req("r", 0), [0.0, 0.0, 0.0]),
        ("affinity", req("r", 0, pod="b"), [0.0, 1.0, 0.0]),
        ("remaining-work", req("r", 0), [1.0, 1.0, 1.0]),
        ("waiting-queue", req("r", 0), [1.0, 0.0, 1.0]),  # only requests queued inside the engine count
        # Dynamo's cost in 16-token blocks: 100/16 to prefill + (kv used + 100)/16 active
        ("kv-router", req("r", 0), [(5637.5 - 1262.5) / 5625, 0.0, 1.0]),
    ],
)
def test_scorers(name, request_, expected) -> None:
    got = SCORERS[name](view(), request_, [A, B, C])
    assert got == pytest.approx(expected)
    assert all(0.0 <= s <= 1.0 for s in got)


@pytest.mark.parametrize(
    ("picker", "seq", "scores", "expected"),
    [
        ("max-score", 0, [0.1, 0.9, 0.3], "b"),
        ("max-score", 0, [0.9, 0.9, 0.3], "a"),
        ("max-score", 1, [0.9, 0.9, 0.3], "b"),  # ties rotate with the request's seq
        ("first", 1, [0.9, 0.9, 0.3], "a"),
    ],
)
def test_pickers(picker, seq, scores, expected) -> None:
    assert PICKERS[picker](req("r", seq), [A, B, C], scores).pod_id == expected


def test_profile_runs_filters_then_weighted_scorers() -> None:
    profile = RoutingProfile(filters=("healthy",), scorers=(("prefix", 3.0), ("queue", 1.0)))
    # b caches the prompt's prefix; its long queue costs 1, the prefix is worth 3.
    assert profile.pick(view(), req("r", 0, hash_ids=(1, 2)), [A, B, C]).pod_id == "b"
    assert (
        RoutingProfile(filters=("healthy",), scorers=(("queue", 1.0),))
        .pick(view(), req("r", 0), [A, B, C])
        .pod_id
        == "a"
    )
    assert RoutingProfile(filters=("idle", "healthy")).pick(view(), req("r", 0), [A, B, C]) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"filters": ("nope",)},
        {"scorers": (("nope", 1.0),)},
        {"picker": "nope"},
        {"scorers": (("queue", -1.0),)},
    ],
)
def test_profile_rejects_unknown_plugins(kwargs) -> None:
    with pytest.raises(ValueError):
        RoutingProfile(**kwargs)


def test_tentative_counts_placements() -> None:
    t = Tentative([pod("a", running=3, max_running=4), pod("b", max_running=1)])
    assert t.free_slots() == 2
    t.place(req("r", 0, prompt=50), t.pods[0])
    assert (t.pods[0].running, t.pods[0].kv_used_tokens, t.free_slots()) == (4, 51, 1)
    t.place(req("s", 1), t.pods[0])  # beyond max_running it queues inside the engine
    assert (t.pods[0].running, t.pods[0].waiting) == (4, 1)


def test_tentative_keeps_its_open_slot_totals_as_requests_are_placed() -> None:
    """The totals are counted once and then updated by place(); they must match a recount over
    the placed pods for every lookahead asked, whether asked before or after the placements."""
    pods = [pod("a", running=3, max_running=4), pod("b", max_running=2), pod("c", max_running=8, healthy=False)]
    t = Tentative(pods)
    assert (t.free_slots(), t.free_slots(2)) == (3, 7)  # c is unhealthy: it counts for nothing
    for i, target in enumerate(["a", "a", "b", "c", "b", "b", "a"]):
        t.place(req(f"r{i}", i), next(p for p in t.pods if p.pod_id == target))
        for lookahead in (0, 1, 2):
            assert t.free_slots(lookahead) == Tentative(t.pods).free_slots(lookahead), (i, lookahead)
    assert t.free_slots() == 0 and t.free_slots(2) == 1  # a: 4 running + 2 waiting; b: 2 running + 1 waiting


P_IDLE = pod("idle")
P_BUSY = pod("busy", prefilling=3000)
P_SMALL = pod("small", prefilling=500)
P_CACHED_BUSY = pod("cached-busy", prefilling=3000, cached=frozenset({1, 2}))


@pytest.mark.parametrize(
    ("request_", "pods", "expected"),
    [
        (req("r", 0, prompt=1000), [P_IDLE, P_BUSY, P_SMALL], ["idle", "small"]),  # 500 + 1000 <= 2048
        (req("r", 0, prompt=1600), [P_IDLE, P_BUSY, P_SMALL], ["idle"]),  # 500 + 1600 > 2048
        (req("r", 0, prompt=9000), [P_IDLE, P_BUSY], ["idle"]),  # a big prompt still goes to an idle pod
        (req("r", 0, prompt=9000), [P_BUSY, P_SMALL], []),  # nowhere idle enough: it waits
        # the busy pod caches 1,024 of its 1,600 tokens: 3000 + 576 > 2048, so it is paced out, and
        # the request waits for it rather than lose the hit on the idle pod
        (req("r", 0, prompt=1600, hash_ids=(1, 2, 3)), [P_IDLE, P_CACHED_BUSY], []),
        # ... unless an eligible pod caches as much
        (req("r", 0, prompt=1600, hash_ids=(1, 2, 3)), [pod("c2", cached=frozenset({1, 2})), P_CACHED_BUSY], ["c2"]),
        # no prefix involved: the idle pod takes it
        (req("r", 0, prompt=1600, hash_ids=(7,)), [P_IDLE, P_CACHED_BUSY], ["idle"]),
    ],
)
def test_prefill_pacing(request_, pods, expected) -> None:
    assert [p.pod_id for p in pace_prefill(request_, pods, 2048)] == expected


def test_profile_paces_after_its_filters_and_tentative_counts_the_new_prefill() -> None:
    profile = RoutingProfile(filters=("healthy",), scorers=(("queue", 1.0),), prefill_pace_tokens=2048)
    r1, r2 = req("r1", 0, prompt=1500), req("r2", 1, prompt=1500)
    tent = Tentative([pod("a"), pod("b", healthy=False)])
    first = profile.pick(view(), r1, tent.pods)
    assert first is not None and first.pod_id == "a"
    tent.place(r1, first)
    assert tent.pods[0].pending_prefill_tokens == 1500
    assert profile.pick(view(), r2, tent.pods) is None  # a is still prefilling r1; b is unhealthy
