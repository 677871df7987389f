"""The machine's drift taken out of a live comparison (`llmfleet.demo.drift`): with a stand-in
simulator whose latency grows with the engines' slowdown, replays run at different speeds must
give back each policy's own ratio at one speed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmfleet.demo.drift import ReplayFit, adjust, drift_adjusted, fit_slowdown, means

IDS = [f"r{i}" for i in range(40)]


def fake_simulate(entry: str, k: float, phases: tuple[tuple[float, float], ...] | None = None) -> dict[str, tuple[float, float, float]]:
    """Each request: 10-40 tokens at 50 ms x k x the phase's factor where it starts, a wait that
    grows steeply with k (queueing near capacity), and a policy that waits `FACTOR[entry]` as
    long as fcfs-rr."""
    out = {}
    for n, i in enumerate(IDS):
        arrival = float(n)
        f = [x for start, x in (phases or ((0.0, 1.0),)) if start <= arrival][-1]
        wait = FACTOR[entry] * (0.2 + 3.0 * (k * f - 0.8) ** 2) * (1 + n % 3)
        first = arrival + wait
        out[i] = (arrival, first, first + 0.05 * k * f * (TOKENS[i] - 1))
    return out


FACTOR = {"fcfs-rr": 1.0, "llmfleet": 0.6}
TOKENS = {i: 10 * (1 + n % 4) + 1 for n, i in enumerate(IDS)}


def test_means_split_service_latency_and_first_token() -> None:
    m = means([(0.0, 1.0, 3.0), (1.0, 1.5, 2.5)])
    assert m == {"service_s": pytest.approx(1.5), "latency_s": pytest.approx(2.25), "ttft_s": pytest.approx(0.75)}


@pytest.mark.parametrize("k", [0.6, 1.0, 1.37, 2.2])
def test_the_slowdown_is_found_from_the_service_time(k: float) -> None:
    assert fit_slowdown(lambda s: 0.5 * s, 0.5 * k) == pytest.approx(k, abs=1e-4)


@pytest.mark.parametrize(
    ("residuals", "expected"),
    [
        ({"fcfs-rr": 1.0, "llmfleet": 1.0}, 0.8),  # faithful up to speed: the simulator's ratio
        ({"fcfs-rr": 1.1, "llmfleet": 1.1}, 0.8),  # off alike for both: still its ratio
        ({"fcfs-rr": 1.0, "llmfleet": 1.2}, 0.96),  # llmfleet worse live than simulated: it shows
    ],
)
def test_the_adjusted_ratio_is_the_simulators_times_the_residuals(residuals: dict, expected: float) -> None:
    fits = [ReplayFit(e, e, 1.0, {"latency_s": 2.0 * r}, {"latency_s": 2.0}) for e, r in residuals.items()]
    table = adjust(fits, "fcfs-rr", {"fcfs-rr": 5.0, "llmfleet": 4.0})
    assert table["llmfleet"]["adjusted_ratio"] == pytest.approx(expected)
    assert table["fcfs-rr"]["adjusted_ratio"] == 1.0


@pytest.mark.parametrize(
    "speeds",
    [
        {"fcfs-rr (earlier)": 1.0, "llmfleet": 1.0, "fcfs-rr": 1.0},  # a steady machine
        {"fcfs-rr (earlier)": 0.9, "llmfleet": 1.3, "fcfs-rr": 1.1},  # llmfleet's replay in a slow phase
        {"fcfs-rr (earlier)": 1.25, "llmfleet": 0.85, "fcfs-rr": 1.3},  # a fast one
    ],
)
def test_replays_at_different_speeds_give_back_the_policys_own_ratio(speeds: dict[str, float]) -> None:
    entry = {"fcfs-rr (earlier)": "fcfs-rr", "llmfleet": "llmfleet", "fcfs-rr": "fcfs-rr"}
    replays = {label: (entry[label], fake_simulate(entry[label], k)) for label, k in speeds.items()}
    result = drift_adjusted(replays, fake_simulate, "fcfs-rr")
    assert [r["engine_slowdown"] for r in result["replays"]] == pytest.approx(list(speeds.values()), abs=1e-3)
    assert [r["label"] for r in result["replays"]] == list(speeds)
    ratios = result["ratios"]["llmfleet"]
    at_one_speed = means(list(fake_simulate("llmfleet", 1.1).values()))["latency_s"] / means(
        list(fake_simulate("fcfs-rr", 1.1).values())
    )["latency_s"]
    common = result["common_slowdown"]
    expected = means(list(fake_simulate("llmfleet", common).values()))["latency_s"] / means(
        list(fake_simulate("fcfs-rr", common).values())
    )["latency_s"]
    assert ratios["adjusted_ratio"] == pytest.approx(expected, abs=2e-3)
    assert ratios["residual"] == pytest.approx(1.0, abs=1e-3)
    # The stand-in's llmfleet waits 0.6 of fcfs-rr's wait at any one speed: its own TTFT ratio.
    assert ratios["adjusted_ttft_ratio"] == pytest.approx(0.6, abs=2e-3)
    lo, hi = ratios["adjusted_ratio_ci95"]
    assert lo <= ratios["adjusted_ratio"] <= hi < 1.0
    if speeds["llmfleet"] > speeds["fcfs-rr"]:
        # Raw, llmfleet's slow replay hides its win; taken out, it is back below 1.
        assert ratios["live_ratio"] > at_one_speed
    assert ratios["adjusted_ratio"] < 1.0


def test_the_demo_prints_the_adjusted_ratios_with_each_replays_speed_and_fit() -> None:
    from llmfleet.demo.report import adjusted_note

    replays = {label: ("fcfs-rr" if label.startswith("fcfs") else label, fake_simulate("fcfs-rr" if label.startswith("fcfs") else label, k))
               for label, k in {"fcfs-rr (earlier)": 0.9, "llmfleet": 1.3, "fcfs-rr": 1.1}.items()}  # fmt: skip
    note = adjusted_note(drift_adjusted(replays, fake_simulate, "fcfs-rr"))
    assert "x0.90, x1.30, x1.10 in the order they ran" in note and "within 0% of the live one" in note
    assert "to fcfs-rr: llmfleet 0." in note and "fcfs-rr 1.00" not in note
    assert "mean TTFT: llmfleet 0.60 [" in note, note


def _noisy(rows: dict[str, tuple[float, float, float]], sd: float, seed: int) -> dict[str, tuple[float, float, float]]:
    """Each request's wait and decode stretched by its own random factor (mean 1)."""
    import random

    rng = random.Random(seed)
    out = {}
    for i, (a, t, f) in rows.items():
        x = rng.lognormvariate(-sd * sd / 2, sd)
        out[i] = (a, a + (t - a) * x, a + (f - a) * x)
    return out


def test_the_interval_on_an_adjusted_ratio_widens_with_the_requests_own_noise() -> None:
    """Replays that scatter around the simulator request by request (while the fitted speed stays
    the same) leave the estimate near the policy's own ratio, with an interval that covers it and
    grows with the scatter: the interval is over requests, as the table's are."""
    own = means(list(fake_simulate("llmfleet", 1.0).values()))["latency_s"] / means(list(fake_simulate("fcfs-rr", 1.0).values()))["latency_s"]
    widths = []
    for sd in (0.05, 0.3):
        replays = {"fcfs-rr": ("fcfs-rr", _noisy(fake_simulate("fcfs-rr", 1.0), sd, 1)),
                   "llmfleet": ("llmfleet", _noisy(fake_simulate("llmfleet", 1.0), sd, 2))}  # fmt: skip
        row = drift_adjusted(replays, fake_simulate, "fcfs-rr")["ratios"]["llmfleet"]
        lo, hi = row["adjusted_ratio_ci95"]
        assert lo < own < hi, (sd, row)
        widths.append(hi - lo)
    assert widths[1] > 2 * widths[0]


def test_without_every_requests_times_there_is_no_interval() -> None:
    from llmfleet.demo.drift import adjusted_intervals

    fits = [ReplayFit(e, e, 1.0, {"latency_s": 2.0}, {"latency_s": 2.0}) for e in ("fcfs-rr", "llmfleet")]
    assert adjusted_intervals(fits, "fcfs-rr", {"fcfs-rr": {}, "llmfleet": {}}) == {}


def test_without_prompt_text_or_a_baseline_nothing_is_adjusted() -> None:
    from llmfleet.demo.drift import drift_adjusted_ratios
    from llmfleet.demo.run import DemoOptions
    from llmfleet.demo.workload import WorkloadSpec, build_workload

    workload = build_workload(WorkloadSpec(count=4, rate=2.0))  # the trace's own lengths: no text
    assert all(r.prompt_text is None for r in workload)
    assert drift_adjusted_ratios(DemoOptions(), workload, {"fcfs-rr": [], "llmfleet": []}) is None


def test_time_per_token_is_taken_per_phase_weighted_by_time_decoding_there() -> None:
    from llmfleet.demo.drift import time_per_token_by_phase

    rows = {
        "a": (0.0, 1.0, 9.0),  # 9 tokens over 8 s: 1 s a token, all in phase 0
        "b": (0.0, 6.0, 16.0),  # 5 tokens over 10 s: 2.5 s a token, 4 s in phase 0 and 6 s in phase 1
        "c": (0.0, 25.0, 26.0),  # 1 s of decoding in phase 2: too little to say
    }
    got = time_per_token_by_phase(rows, {"a": 9, "b": 5, "c": 3}, phase_s=10.0)
    assert got == {0: pytest.approx((8 * 1.0 + 4 * 2.5) / 12), 1: pytest.approx(2.5)}


def test_a_replays_course_of_speeds_is_fitted_and_taken_out() -> None:
    """llmfleet's replay met a slow phase in its first 10 s: at its mean speed the simulator
    misses its latency, with the course fitted it does not, and its own ratio comes back."""
    from llmfleet.demo.drift import as_phases

    slow_start = as_phases({0: 1.3, 1: 0.95, 2: 0.95, 3: 0.95})
    replays = {"fcfs-rr": ("fcfs-rr", fake_simulate("fcfs-rr", 1.0)), "llmfleet": ("llmfleet", fake_simulate("llmfleet", 1.0, slow_start))}
    at_mean = drift_adjusted(replays, fake_simulate, "fcfs-rr")
    with_course = drift_adjusted(replays, fake_simulate, "fcfs-rr", TOKENS)
    fitted = with_course["replays"][1]
    assert fitted["speed_phases"][0] > 1.2 and all(f < 1.0 for f in fitted["speed_phases"][1:]), fitted
    assert fitted["simulated_latency_s"] == pytest.approx(fitted["live_latency_s"], rel=0.02)
    assert abs(at_mean["ratios"]["llmfleet"]["residual"] - 1) > 0.05
    assert with_course["ratios"]["llmfleet"]["residual"] == pytest.approx(1.0, abs=0.02)
    own = means(list(fake_simulate("llmfleet", 1.0).values()))["latency_s"] / means(list(fake_simulate("fcfs-rr", 1.0).values()))["latency_s"]
    assert with_course["ratios"]["llmfleet"]["adjusted_ratio"] == pytest.approx(own, abs=0.02)


def test_the_demo_fits_replays_that_are_the_simulator_at_known_speeds_back_to_those_speeds(tmp_path) -> None:
    """The demo's own glue (`drift_adjusted_ratios`): calibration, trace, fleet and policies.
    Replays that are the simulator itself, one at 1.0 and one at 1.2 times the calibrated time
    with a slow first 10 s, are fitted back to those speeds, and the residuals are 1."""
    import json

    from llmfleet.demo.drift import (
        as_phases,
        calibrated_cost,
        drift_adjusted_ratios,
        sim_fleet,
        workload_trace,
    )
    from llmfleet.demo.replay import Outcome
    from llmfleet.demo.run import DemoOptions, policy_config
    from llmfleet.demo.workload import WorkloadSpec, build_workload
    from llmfleet.fleet.local import FleetSpec
    from llmfleet.policies.registry import make_policy
    from llmfleet.sim.live_predictions import ExactPredictor
    from llmfleet.sim.simulator import Simulator

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"prompt": "Tell me about " + "things " * (5 + i % 40), "output_tokens": 20 + (37 * i) % 200}) + "\n"
                            for i in range(60)))  # fmt: skip
    spec = WorkloadSpec(count=60, rate=3.0, prompt_pool=str(pool))
    workload = build_workload(spec)
    options = DemoOptions(fleet=FleetSpec(engines=2, max_num_seqs=4), workload=spec, ranker=None, hidden_length=False)
    cfg, trace = sim_fleet(2, 4), workload_trace(workload)

    def replay(entry: str, k: float, phases=None) -> list[Outcome]:  # type: ignore[no-untyped-def]
        sim = Simulator(trace, make_policy(policy_config(entry)), calibrated_cost().slowed(k), replace(cfg, speed_phases=phases),
                        predictor=ExactPredictor())  # fmt: skip
        return [Outcome(r.request_id, r.arrival_s, r.first_token_s, r.finish_s, r.output_tokens, r.output_tokens, "ok")
                for r in sim.run().records]  # fmt: skip

    slow_start = as_phases({0: 1.25, 1: 0.95, 2: 0.95})
    adjusted = drift_adjusted_ratios(options, workload, {"fcfs-rr": replay("fcfs-rr", 1.0), "llmfleet": replay("llmfleet", 1.2, slow_start)})
    assert adjusted is not None
    fits = adjusted["replays"]
    assert fits[0]["engine_slowdown"] == pytest.approx(1.0, abs=0.03)
    assert fits[1]["speed_phases"][0] > fits[1]["speed_phases"][1]
    for entry in ("fcfs-rr", "llmfleet"):
        assert adjusted["ratios"][entry]["residual"] == pytest.approx(1.0, abs=0.03)
