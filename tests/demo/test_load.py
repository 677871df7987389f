"""Offered load from a measured capacity: the burst's saturated throughput and the rate it gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmfleet.demo.load import queue_share, rate_for_load, saturated_throughput
from llmfleet.demo.replay import Outcome
from llmfleet.demo.workload import WorkloadRequest


def _o(first: float, finish: float, tokens: int, status: str = "ok") -> Outcome:
    return Outcome(f"r{first}-{finish}", 0.0, first, finish, tokens, tokens, status)


@pytest.mark.parametrize(
    ("outcomes", "slots", "expected"),
    [
        # 2 slots, 3 requests: the span ends when the 2nd finishes (one left); every token before it counts.
        ([_o(0.0, 1.0, 100), _o(0.0, 2.0, 200), _o(1.0, 3.0, 200)], 2, (100 + 200 + 100) / 2.0),
        # 1 slot, served one after another: 100 tokens/s throughout, the last one's tokens excluded.
        ([_o(0.0, 1.0, 100), _o(1.0, 2.0, 100), _o(2.0, 3.0, 100)], 1, 200 / 2.0),
        # a request whose first token comes after the span adds nothing.
        ([_o(0.0, 1.0, 50), _o(0.0, 1.0, 50), _o(1.5, 2.0, 999)], 2, 100 / 1.0),
    ],
)
def test_saturated_throughput_counts_tokens_while_every_slot_was_busy(outcomes, slots, expected) -> None:
    assert saturated_throughput(outcomes, slots) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("outcomes", "slots", "message"),
    [
        ([_o(0.0, 1.0, 10), _o(0.0, 1.0, 10)], 2, "cannot keep 2 slots busy"),
        ([_o(0.0, 1.0, 10), _o(0.0, 1.0, 10, status="UNAVAILABLE"), _o(0.0, 1.0, 10)], 1, "failed"),
        ([_o(0.0, 1.0, 10)], 0, "slots must be at least 1"),
    ],
)
def test_a_capacity_that_cannot_be_measured_is_an_error(outcomes, slots, message) -> None:
    with pytest.raises(ValueError, match=message):
        saturated_throughput(outcomes, slots)


def test_the_rate_offers_the_fraction_of_capacity_for_the_workloads_answer_lengths() -> None:
    work = [WorkloadRequest(f"r{i}", 0.0, (5,), n) for i, n in enumerate((100, 300))]  # mean 200 tokens
    assert rate_for_load(0.9, 1000.0, work) == pytest.approx(0.9 * 1000 / 200)
    for load in (0.0, -1.0, 2.5):
        with pytest.raises(ValueError, match="fraction of the fleet's capacity"):
            rate_for_load(load, 1000.0, work)


def test_a_simulated_fleets_capacity_is_its_slots_decoding_at_its_step_time(tmp_path: Path) -> None:
    """Two simulated engines of 2 slots, each step 10 ms + 0.5 ms per sequence: at most 4 tokens
    per 11 ms. The burst through the dispatcher measures close to that, never above it."""
    from llmfleet.demo.run import measure_capacity
    from llmfleet.fleet.local import FleetSpec, LocalFleet

    work = [WorkloadRequest(f"r{i}", 0.0, tuple(range(4, 20)), 60) for i in range(4)]
    with LocalFleet(FleetSpec(engines=2, engine="simulated", max_num_seqs=2), tmp_path) as fleet:
        capacity = measure_capacity(fleet, work, hidden_length=False)
    bound = 4 / (0.010 + 0.0005 * 2)
    assert 0.5 * bound < capacity <= 1.02 * bound, (capacity, bound)


def test_demo_load_replaces_the_rate_and_cannot_be_given_with_it(monkeypatch, tmp_path: Path) -> None:
    import llmfleet.demo.run as run
    from llmfleet.cli import main
    from llmfleet.demo.cli import START_RATE

    started = []
    monkeypatch.setattr(run, "ensure_ranker", lambda path: tmp_path)
    monkeypatch.setattr(run, "run_demo", started.append)
    assert main(["demo", "--prompts", "trace", "--load", "0.9"]) == 0
    assert (started[0].load, started[0].queue_share) == (0.9, None)
    assert main(["demo", "--prompts", "trace"]) == 0  # by default the rate is searched for, from START_RATE
    assert (started[1].load, started[1].queue_share, started[1].workload.rate) == (None, 0.45, START_RATE)
    assert main(["demo", "--prompts", "trace", "--rate", "2"]) == 0  # a rate given is used as it is
    assert (started[2].load, started[2].queue_share, started[2].workload.rate) == (None, None, 2.0)
    assert main(["demo", "--prompts", "trace", "--queue-share", "0.3"]) == 0
    assert started[3].queue_share == 0.3
    for clash in (["--load", "0.9", "--rate", "2"], ["--queue-share", "0.3", "--rate", "2"], ["--queue-share", "0.3", "--load", "1"]):
        with pytest.raises(SystemExit):
            main(["demo", "--prompts", "trace", *clash])
    with pytest.raises(SystemExit, match="queue-share is the fraction"):
        main(["demo", "--prompts", "trace", "--queue-share", "1.5"])
    for bad in ("0", "2.5"):
        with pytest.raises(SystemExit, match="--load is a fraction of the fleet's capacity"):
            main(["demo", "--prompts", "trace", "--load", bad])
    assert len(started) == 4


def test_the_e2e_bench_refuses_a_bad_load_before_it_starts_a_fleet(monkeypatch, capsys) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "dataplane_e2e.py"
    spec = importlib.util.spec_from_file_location("dataplane_e2e", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "ensure_ranker", lambda path: pytest.fail("started before checking --load"))
    with pytest.raises(SystemExit):
        bench.main(["--load", "0"])
    assert "--load is a fraction of the fleet's capacity" in capsys.readouterr().err
    for argv, message in (
        (["--queue-share", "1.5"], "--queue-share is the fraction"),
        (["--load", "1", "--queue-share", "0.4"], "--load and --queue-share each set the rate"),
    ):
        with pytest.raises(SystemExit):
            bench.main(argv)
        assert message in capsys.readouterr().err


def _q(arrival: float, first: float, finish: float) -> Outcome:
    return Outcome(f"q{arrival}", arrival, first, finish, 10, 10, "ok")


def test_the_queue_share_is_the_mean_wait_for_the_first_token_over_the_mean_latency() -> None:
    assert queue_share([_q(0.0, 1.0, 4.0), _q(1.0, 1.5, 3.0)]) == pytest.approx((1.0 + 0.5) / (4.0 + 2.0))
    failed = Outcome("x", 0.0, None, None, 0, 10, "UNAVAILABLE")
    assert queue_share([_q(0.0, 1.0, 2.0), failed]) == pytest.approx(0.5)  # failures are not latencies
    with pytest.raises(ValueError, match="no request completed"):
        queue_share([failed])


@pytest.mark.parametrize(
    ("tried", "expected"),
    [
        ([(3.0, 0.45)], None),  # within 0.1 of 0.4: this rate
        ([(3.0, 0.07)], 3.0 * 1.2),  # far below: a big step up
        ([(3.0, 0.25)], 3.0 * 1.08),  # near: a small step up
        ([(3.0, 0.75)], 3.0 / 1.2),  # far above: a big step down
        ([(3.0, 0.07), (3.6, 0.8)], (3.0 * 3.6) ** 0.5),  # bracketed: the geometric middle
        ([(3.0, 0.07), (3.6, 0.8), (3.29, 0.2)], (3.29 * 3.6) ** 0.5),  # the bracket narrows from below
    ],
)
def test_the_rate_search_steps_toward_the_target_share_and_bisects_once_bracketed(tried, expected) -> None:
    from llmfleet.demo.load import next_rate

    got = next_rate(tried, 0.4)
    assert got == (None if expected is None else pytest.approx(expected))


def test_the_closest_rate_is_used_when_the_search_runs_out() -> None:
    from llmfleet.demo.load import check_queue_share, closest_rate

    assert closest_rate([(3.0, 0.1), (3.6, 0.9), (3.3, 0.55)], 0.4) == 3.3
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="queue-share"):
            check_queue_share(bad)


def test_on_a_simulated_fleet_the_search_raises_the_rate_until_fcfs_rr_queues(tmp_path: Path) -> None:
    """One simulated engine of one slot serves a 20-token answer in about 0.2 s. At 3 requests/s
    fcfs-rr's first tokens take about 14% of its latency; the search must raise the rate to one where fcfs-rr's first tokens
    take a share of its latency nearer 0.4, and report every rate it tried."""
    from llmfleet.demo.run import find_queue_rate
    from llmfleet.demo.workload import WorkloadSpec
    from llmfleet.fleet.local import FleetSpec, LocalFleet

    spec = WorkloadSpec(count=16, rate=3.0, min_output_tokens=20, max_output_tokens=20, max_prompt_tokens=16)
    with LocalFleet(FleetSpec(engines=1, engine="simulated", max_num_seqs=1), tmp_path) as fleet:
        search = find_queue_rate(fleet, spec, 0.4, hidden_length=False)
    rate, tried = search.rate, search.tried
    assert tried[0][0] == 3.0 and tried[0][1] < 0.25, tried
    assert rate > 3.0 and abs(dict(tried)[rate] - 0.4) < abs(tried[0][1] - 0.4), tried
    # The try at the chosen rate is kept whole: the baseline's earlier replay in the demo.
    assert search.replay_at_rate is not None
    outcomes, busy, _hit_rate = search.replay_at_rate
    assert len(outcomes) == 16 and all(o.ok for o in outcomes) and busy
    assert queue_share(outcomes) == pytest.approx(dict(tried)[rate])
