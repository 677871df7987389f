"""Filters, scorers and pickers of the endpoint-picker pipeline, each in a table."""

from __future__ import annotations

import pytest

from llmfleet.policies.routing import FILTERS, PICKERS, SCORERS, RoutingProfile, Tentative

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
