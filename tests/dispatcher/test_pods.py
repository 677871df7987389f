"""A pod's snapshot for the policy (`PodConnection.state`): reused while nothing changed, and
never stale: a write to any field, a load report going stale or a cooldown ending all show."""

from __future__ import annotations

import pytest

from llmfleet.core.clock import FakeClock
from llmfleet.dispatcher.pods import PodConnection


@pytest.fixture
async def conn():
    clock = FakeClock(1000.0)
    pod = PodConnection("p0", "127.0.0.1:1", clock=clock, on_change=lambda: None, stale_after_s=3.0)
    # As after its Info and first load report (no load stream is started here).
    pod.connected, pod.engine_healthy, pod.max_num_seqs, pod.kv_capacity_tokens = True, True, 4, 10_000
    yield pod
    await pod.close()


async def test_state_is_reused_until_a_field_is_written(conn) -> None:
    first = conn.state(1000.0)
    assert conn.state(1000.5) is first  # nothing changed: the same snapshot
    conn.add_inflight("r1", kv_tokens=100, expected_left=50.0)
    second = conn.state(1000.5)
    assert (second.running, second.kv_used_tokens, second.est_remaining_tokens) == (1, 100, 50.0)
    conn.seconds_per_token = 0.5  # written from outside, as the slice runner does
    assert conn.state(1000.5).est_remaining_s == pytest.approx(25.0)
    conn.start_prefill("r1", 64)
    assert conn.state(1000.5).pending_prefill_tokens == 64
    conn.remove_inflight("r1")
    third = conn.state(1000.5)
    assert (third.running, third.kv_used_tokens, third.pending_prefill_tokens) == (0, 0, 0)


@pytest.mark.parametrize(
    ("change", "at", "healthy"),
    [
        (None, 1003.0, True),  # exactly stale_after_s since the last report: still healthy
        (None, 1003.001, False),  # the report went stale with no write at all
        ("cooldown", 1004.0, False),
        ("cooldown", 1005.0, True),  # the cooldown ended
        ("draining", 1000.5, False),
        ("disconnected", 1000.5, False),
    ],
)
async def test_health_in_the_snapshot_follows_the_clock_and_the_fields(conn, change, at, healthy) -> None:
    conn.last_report_s = 1000.0
    assert conn.state(1000.0).healthy  # a snapshot exists before the change
    if change == "cooldown":
        conn.last_report_s = 1003.0  # reports keep coming
        conn.cooldown_until = 1005.0
    elif change == "draining":
        conn.draining = True
    elif change == "disconnected":
        conn.connected = False
    assert conn.state(at).healthy is healthy
    assert conn.state(at).healthy is conn.healthy(at)
