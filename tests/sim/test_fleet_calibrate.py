"""Calibrating the simulator on a live fleet (`llmfleet.sim.fleet_calibrate`, `llmfleet sim
calibrate --fleet`): the histogram arithmetic, the fitted slowdown, and the whole command against
a fleet of simulated engines, whose true timing is known."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

EXPOSITION = """# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 4.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 4.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.8
vllm:time_to_first_token_seconds_bucket{engine="1",le="+Inf",model_name="m"} 1.0
vllm:time_to_first_token_seconds_count{engine="1",model_name="m"} 1.0
vllm:time_to_first_token_seconds_sum{engine="1",model_name="m"} 0.2
# HELP llmfleet_dispatcher_queue_seconds Queue wait
# TYPE llmfleet_dispatcher_queue_seconds histogram
llmfleet_dispatcher_queue_seconds_bucket{le="+Inf"} 2.0
llmfleet_dispatcher_queue_seconds_count 2.0
llmfleet_dispatcher_queue_seconds_sum 0.5
"""


def test_histogram_totals_sum_over_labels_and_means_are_between_scrapes() -> None:
    from llmfleet.sim.fleet_calibrate import histogram_means, histogram_totals

    names = ("vllm:time_to_first_token_seconds", "llmfleet_dispatcher_queue_seconds", "absent_seconds")
    after = histogram_totals(EXPOSITION, names)
    assert after["vllm:time_to_first_token_seconds"] == pytest.approx((1.0, 5.0))
    assert after["llmfleet_dispatcher_queue_seconds"] == pytest.approx((0.5, 2.0))
    before = {"vllm:time_to_first_token_seconds": (0.2, 1.0)}
    means = histogram_means(before, after)
    assert means["vllm:time_to_first_token_seconds"] == pytest.approx(0.8 / 4)
    assert means["llmfleet_dispatcher_queue_seconds"] == pytest.approx(0.25)
    assert means["absent_seconds"] != means["absent_seconds"]  # NaN: nothing observed


def test_gauge_values_are_read_under_the_callers_keys_and_absent_gauges_left_out() -> None:
    from llmfleet.sim.fleet_calibrate import gauge_values

    page = """# HELP llmfleet_dispatcher_ranker_tau Kendall tau
# TYPE llmfleet_dispatcher_ranker_tau gauge
llmfleet_dispatcher_ranker_tau 0.344
# HELP llmfleet_dispatcher_ranker_fallback Fallback
# TYPE llmfleet_dispatcher_ranker_fallback gauge
llmfleet_dispatcher_ranker_fallback 0.0
"""
    names = {"llmfleet_dispatcher_ranker_tau": "tau", "llmfleet_dispatcher_ranker_fallback": "fallback", "absent": "absent"}
    assert gauge_values(page, names) == {"tau": 0.344, "fallback": 0.0}
    assert gauge_values(EXPOSITION, names) == {}  # histograms only: no gauge to read


@pytest.mark.parametrize(
    ("dispatcher_ttft", "queued", "client_ttft", "client_e2e", "expected"),
    [
        # dispatch = 0.5 - 0.05 - 0.1; first relay = 0.6 - 0.05 - 0.35 - 0.1; finish = 2.4 - 0.05 - 0.35 - 1.6
        (0.5, 0.05, 0.6, 2.4, (0.35, 0.1, 0.4)),
        (0.1, 0.0, 0.1, 1.7, (0.0, 0.0, 0.1)),  # nothing added on the way there or for the first token
        (0.05, 0.0, 0.08, 1.5, (0.0, 0.0, 0.0)),  # noise never gives a negative delay
    ],
)
def test_dataplane_terms_split_the_clients_time(dispatcher_ttft, queued, client_ttft, client_e2e, expected) -> None:
    from llmfleet.sim.fleet_calibrate import dataplane_terms

    engine = {
        "vllm:time_to_first_token_seconds": 0.1,
        "vllm:request_decode_time_seconds": 1.5,
        "vllm:inter_token_latency_seconds": 0.012,
    }
    dispatcher = {"llmfleet_dispatcher_ttft_seconds": dispatcher_ttft, "llmfleet_dispatcher_queue_seconds": queued}
    terms = dataplane_terms(engine, dispatcher, client_ttft, client_e2e)
    assert (terms.dispatch_delay_s, terms.first_token_relay_s, terms.finish_relay_s) == pytest.approx(expected)
    assert terms.decode_step_s == 0.012
    assert terms.end_notice_s == 0.0  # no dispatcher latency scraped: no notice term


@pytest.mark.parametrize(
    ("dispatcher_e2e", "expected"),
    [
        (2.2, 0.2),  # 2.2 - 0.05 queued - 0.35 dispatch - 1.6 engine: the end reached the dispatcher 0.2 s late
        (1.9, 0.0),  # noise never gives a negative delay
    ],
)
def test_the_end_notice_is_what_the_dispatchers_latency_adds_after_the_engine(dispatcher_e2e, expected) -> None:
    from llmfleet.sim.fleet_calibrate import dataplane_terms

    engine = {
        "vllm:time_to_first_token_seconds": 0.1,
        "vllm:request_decode_time_seconds": 1.5,
        "vllm:inter_token_latency_seconds": 0.012,
    }
    dispatcher = {
        "llmfleet_dispatcher_ttft_seconds": 0.5,
        "llmfleet_dispatcher_queue_seconds": 0.05,
        "llmfleet_dispatcher_e2e_seconds": dispatcher_e2e,
    }
    terms = dataplane_terms(engine, dispatcher, 0.6, 2.4)
    assert terms.end_notice_s == pytest.approx(expected)
    assert terms.finish_relay_s == pytest.approx(0.4)  # the client's own way back is unchanged


def test_a_fleet_calibrated_model_keeps_its_delays_through_save_and_load(tmp_path) -> None:
    from llmfleet.sim.costmodel import CostModel, linear_cost_model
    from llmfleet.sim.fleet_calibrate import DataPlaneTerms, with_dataplane

    probed = linear_cost_model(0.001, 0.004, decode_per_seq_s=0.001)
    model = with_dataplane(probed, DataPlaneTerms(0.012, 0.3, 0.05, 0.2, end_notice_s=0.1), "fleet")
    assert (model.dispatch_delay_s, model.first_token_relay_s, model.finish_relay_s, model.end_notice_s) == (0.3, 0.05, 0.2, 0.1)
    assert model.decode_step_s(1, 0) == model.decode_step_s(8, 0) == 0.012  # flat at what traffic measured
    assert model.prefill_s(100) == probed.prefill_s(100)
    model.save(tmp_path / "cost.json")
    assert CostModel.load(tmp_path / "cost.json") == model
    with pytest.raises(ValueError, match="non-negative"):
        replace(model, dispatch_delay_s=-0.1)
    with pytest.raises(ValueError, match="non-negative"):
        replace(model, end_notice_s=-0.1)


def test_scrape_histograms_sums_each_histogram_over_every_page() -> None:
    from prometheus_client import CollectorRegistry, Histogram, start_http_server

    from llmfleet.engine.process import free_port
    from llmfleet.sim.fleet_calibrate import scrape_histograms

    urls, servers = [], []
    for observations in ([0.5, 1.5], [2.0]):
        registry = CollectorRegistry()
        h = Histogram("vllm:time_to_first_token_seconds", "ttft", registry=registry)
        for v in observations:
            h.observe(v)
        port = free_port()
        servers.append(start_http_server(port, addr="127.0.0.1", registry=registry))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        got = scrape_histograms(urls, ("vllm:time_to_first_token_seconds", "absent"))
    finally:
        for server, thread in servers:
            server.shutdown()
            thread.join()
    assert got["vllm:time_to_first_token_seconds"] == (4.0, 3.0) and got["absent"] == (0.0, 0.0)


def test_the_engine_slowdown_is_recovered_from_the_engines_mean_latency() -> None:
    """Requests run on engines 2.5x slower than probed: the fit finds 2.5 from their mean latency,
    and the calibrated model keeps the probed shape (prefill and decode slowed alike)."""
    import statistics

    from llmfleet.policies.registry import make_policy
    from llmfleet.sim.costmodel import linear_cost_model
    from llmfleet.sim.fleet_calibrate import DataPlaneTerms, fit_engine_slowdown, with_slowdown
    from llmfleet.sim.instance import EngineConfig
    from llmfleet.sim.simulator import SimConfig, Simulator
    from llmfleet.sim.traces import TraceRequest

    probed = linear_cost_model(0.0005, 0.004, decode_per_seq_s=0.0005)
    trace = [TraceRequest(f"r{i}", i * 0.3, 50 + 37 * (i % 9), 20 + 13 * (i % 7)) for i in range(60)]
    cfg = SimConfig(instances=2, engine=EngineConfig(max_running=4))
    truth = Simulator(trace, make_policy("fcfs-rr"), probed.slowed(2.5), cfg).run().records
    measured = statistics.fmean(r.latency_s for r in truth)
    k = fit_engine_slowdown(probed, trace, cfg, measured)
    assert k == pytest.approx(2.5, rel=0.02)
    model = with_slowdown(probed, DataPlaneTerms(0.01, 0.1, 0.02, 0.03, end_notice_s=0.04), k, "fleet")
    assert model.prefill_s(300) == pytest.approx(k * probed.prefill_s(300))
    assert model.decode_step_s(4, 0) == pytest.approx(k * probed.decode_step_s(4, 0))
    assert (model.dispatch_delay_s, model.finish_relay_s, model.end_notice_s) == (0.1, 0.03, 0.04)


def test_under_a_held_queue_the_slowdown_fit_counts_the_time_held() -> None:
    """With a policy that holds requests at the dispatcher, the measured latency (held, then in
    the engine) is matched by the simulator under that policy: k is recovered there too."""
    import statistics

    from llmfleet.core.config import SchedulingConfig
    from llmfleet.policies.registry import make_policy
    from llmfleet.sim.costmodel import linear_cost_model
    from llmfleet.sim.fleet_calibrate import fit_engine_slowdown
    from llmfleet.sim.instance import EngineConfig
    from llmfleet.sim.simulator import SimConfig, Simulator
    from llmfleet.sim.traces import TraceRequest

    probed = linear_cost_model(0.0005, 0.004, decode_per_seq_s=0.0005)
    trace = [TraceRequest(f"r{i}", i * 0.1, 50 + 37 * (i % 9), 20 + 13 * (i % 7)) for i in range(60)]
    cfg = SimConfig(instances=2, engine=EngineConfig(max_running=2))
    held = SchedulingConfig(policy="llmfleet")
    truth = Simulator(trace, make_policy(held), probed.slowed(1.7), cfg).run().records
    measured = statistics.fmean(r.latency_s for r in truth)
    assert fit_engine_slowdown(probed, trace, cfg, measured, config=held) == pytest.approx(1.7, rel=0.02)


def test_prefill_and_decode_slowdowns_are_recovered_apart() -> None:
    """Engines whose decode runs 1.8x slower than probed while prefill runs 0.7x: the mean
    latency and the mean prefill time (first batch to first token) recover both factors, and
    the calibration builds the model with them. One shared factor fits the latency but slows
    prefill like decode, so its first tokens come late."""
    import statistics

    from llmfleet.core.config import SchedulingConfig
    from llmfleet.policies.registry import make_policy
    from llmfleet.sim.costmodel import linear_cost_model
    from llmfleet.sim.fleet_calibrate import (
        DataPlaneTerms,
        fit_engine_slowdown,
        fit_engine_speeds,
        with_slowdown,
    )
    from llmfleet.sim.instance import EngineConfig
    from llmfleet.sim.simulator import SimConfig, Simulator
    from llmfleet.sim.traces import TraceRequest

    probed = linear_cost_model(0.0005, 0.004, decode_per_seq_s=0.0005)
    trace = [TraceRequest(f"r{i}", i * 0.15, 200 + 137 * (i % 9), 20 + 13 * (i % 7)) for i in range(60)]
    cfg = SimConfig(instances=2, engine=EngineConfig(max_running=4))
    fcfs = SchedulingConfig(policy="fcfs-rr")

    def means(model):  # type: ignore[no-untyped-def]
        records = Simulator(trace, make_policy(fcfs), model, cfg).run().records
        return tuple(statistics.fmean(getattr(r, f) for r in records) for f in ("latency_s", "engine_prefill_s", "ttft_s"))

    latency, prefill, ttft = means(probed.slowed(1.8, prefill_k=0.7))
    assert 0 < prefill < ttft  # the prefill time leaves out the wait for a slot
    k, pk = fit_engine_speeds(probed, trace, cfg, latency, prefill, config=fcfs)
    assert (k, pk) == (pytest.approx(1.8, rel=0.03), pytest.approx(0.7, rel=0.05))
    model = with_slowdown(probed, DataPlaneTerms(0.01, 0.1, 0.02, 0.03), k, "fleet", prefill_k=pk)
    assert model.prefill_s(300) == pytest.approx(pk * probed.prefill_s(300))
    assert model.decode_step_s(4, 0) == pytest.approx(k * probed.decode_step_s(4, 0))
    assert means(probed.slowed(k, pk)) == tuple(pytest.approx(x, rel=0.01) for x in (latency, prefill, ttft))
    shared = fit_engine_slowdown(probed, trace, cfg, latency, config=fcfs)
    _, shared_prefill, shared_ttft = means(probed.slowed(shared))
    assert shared_prefill > 1.2 * prefill and shared_ttft > 1.05 * ttft


# ------------------------------------------------------------ the command, on simulated engines
def _calibrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmfleet.cli", "sim", "calibrate", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def simulated_fleet(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """2 simulated engines of 2 slots each (the requests queue at the dispatcher), sidecars,
    and the metrics URLs `llmfleet fleet up` prints."""
    from llmfleet.fleet.local import FleetSpec, LocalFleet

    with LocalFleet(FleetSpec(engines=2, engine="simulated", max_num_seqs=2), tmp_path_factory.mktemp("fleet")) as fleet:
        yield fleet


def _fleet_args(fleet, config) -> list[str]:  # type: ignore[no-untyped-def]
    from llmfleet.engine.process import free_port

    metrics_port = free_port()
    dispatcher = fleet.start_dispatcher(config, metrics_port=metrics_port)
    engines = [a for url in fleet.engine_metrics_urls for a in ("--engine-metrics", url)]
    return ["--fleet", dispatcher.address, "--fleet-metrics", f"http://127.0.0.1:{metrics_port}", *engines]


def test_a_simulated_fleet_calibrates_to_its_engines_own_timing(simulated_fleet, tmp_path) -> None:
    """Starting from the simulated engine's true step times, the fitted slowdown is about 1:
    the engines' histograms, the dispatcher's held time and the simulator's replay of the same
    requests agree. Starting from a model twice as fast, it is about 2."""
    from llmfleet.core.config import SchedulingConfig
    from llmfleet.sim.costmodel import CostModel, load_cost_model

    fast = tmp_path / "twice-as-fast.json"
    truth = load_cost_model("simulated-engine")
    half = replace(truth, prefill_knots_s=tuple(s / 2 for s in truth.prefill_knots_s), decode_base_s=truth.decode_base_s / 2,
                   decode_per_seq_s=truth.decode_per_seq_s / 2, overlap_s=truth.overlap_s / 2)  # fmt: skip
    half.save(fast)
    ks = []
    for start, name in (("simulated-engine", "true"), (str(fast), "fast")):
        out = tmp_path / f"{name}.json"
        args = _fleet_args(simulated_fleet, SchedulingConfig(policy="llmfleet"))
        run = _calibrate(*args, "--cost-model", start, "--requests", "40", "--rate", "4", "--out", str(out))
        assert run.returncode == 0, run.stderr
        assert "policy llmfleet" in run.stdout and f"wrote {out}" in run.stdout
        model = CostModel.load(out)
        started = half if name == "fast" else truth
        ks.append(model.decode_base_s / started.decode_base_s)
        assert 0 <= model.dispatch_delay_s < 0.2 and 0 <= model.finish_relay_s < 0.2
        assert "on the fleet at" in model.source
    # The asyncio engine only ever oversleeps its steps. Leaving out the time held at the
    # dispatcher (a third of the latency here) gives 0.88.
    assert 0.95 <= ks[0] <= 1.6, ks
    assert ks[1] / ks[0] == pytest.approx(2.0, rel=0.35), ks


def test_a_fleet_that_slices_is_refused_in_one_line(simulated_fleet, tmp_path) -> None:
    from llmfleet.core.config import SchedulingConfig

    args = _fleet_args(simulated_fleet, SchedulingConfig(policy="llmfleet", slice_tokens=8))
    run = _calibrate(*args, "--cost-model", "simulated-engine", "--requests", "8", "--rate", "8", "--out", str(tmp_path / "x.json"))
    assert run.returncode == 2 and "slices for 8 requests" in run.stderr and "fcfs-rr" in run.stderr
    assert not (tmp_path / "x.json").exists()
    # Measuring a window without calibrating on it (the fidelity bench's evaluation replays)
    # takes the slices as they come, and counts them.
    import asyncio

    from llmfleet.demo.workload import WorkloadSpec, build_workload
    from llmfleet.sim.fleet_calibrate import measure_window

    workload = build_workload(WorkloadSpec(start_index=1000, count=4, rate=8))
    window = asyncio.run(measure_window(args[1], simulated_fleet.engine_metrics_urls, args[3], workload, one_slice_each=False))
    assert window.requests == 4 and window.slices > 4
    assert len(window.per_engine) == 2 and len(window.engine_speeds) == 2


def test_metrics_that_are_not_an_engines_are_refused(simulated_fleet, tmp_path) -> None:
    from llmfleet.core.config import SchedulingConfig

    args = _fleet_args(simulated_fleet, SchedulingConfig(policy="fcfs-rr"))
    dispatcher_metrics = args[args.index("--fleet-metrics") + 1]
    args = [a if a not in simulated_fleet.engine_metrics_urls else dispatcher_metrics for a in args]
    run = _calibrate(*args, "--cost-model", "simulated-engine", "--requests", "4", "--rate", "8", "--out", str(tmp_path / "x.json"))
    assert run.returncode == 2 and "nothing was observed in vllm:" in run.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--engine", "http://a", "--cost-model", "simulated-engine"], "only apply with --fleet"),
        (["--engine", "http://a", "--engine", "http://b"], "give one --engine"),
        ([], "give one --engine"),
        (["--fleet", "h:1", "--cost-model", "simulated-engine", "--engine-metrics", "http://e"], "needs --fleet-metrics"),
        (["--fleet", "h:1", "--fleet-metrics", "http://m", "--engine-metrics", "http://e"], "either --engine"),
        (["--fleet", "h:1", "--fleet-metrics", "http://m", "--engine", "http://e", "--cost-model", "x"], "either --engine"),
        (["--fleet", "h:1", "--fleet-metrics", "http://m", "--cost-model", "simulated-engine"], "--engine-metrics URL"),
        (["--fleet", "h:1", "--fleet-metrics", "http://m", "--engine-metric", "http://e"], "unrecognized arguments"),
    ],
)
def test_flag_mistakes_fail_in_one_line(argv, message, tmp_path) -> None:
    run = _calibrate(*argv, "--out", str(tmp_path / "x.json"))
    assert run.returncode == 2 and message in run.stderr, run.stderr


def test_engines_at_different_speeds_are_measured_and_simulated_apart() -> None:
    """An engine whose tokens take twice as long: its measured speed is twice the other's, the
    simulated instance runs that much slower, and round-robin routing suffers for it while
    load-aware routing does not (as on the real CPU fleet)."""
    import statistics

    from llmfleet.policies.registry import make_policy
    from llmfleet.sim.costmodel import linear_cost_model
    from llmfleet.sim.fleet_calibrate import Window
    from llmfleet.sim.instance import EngineConfig
    from llmfleet.sim.simulator import SimConfig, Simulator
    from llmfleet.sim.traces import TraceRequest

    itl = "vllm:inter_token_latency_seconds"
    window = Window(1, 1, {}, {}, 0.0, 0.0, per_engine=({itl: 0.010}, {itl: 0.020}, {itl: float("nan")}))
    assert window.engine_speeds == pytest.approx((2 / 3, 4 / 3, 1.0))
    with pytest.raises(ValueError, match="one positive multiplier per instance"):
        SimConfig(instances=2, instance_speeds=(1.0,))
    model = linear_cost_model(0.0002, 0.010, decode_per_seq_s=0.001)
    trace = [TraceRequest(f"r{i}", i * 0.25, 40, 30 + 17 * (i % 5)) for i in range(80)]

    def mean_latency(policy: str, speeds: tuple[float, ...] | None) -> float:
        cfg = SimConfig(instances=2, engine=EngineConfig(max_running=2), instance_speeds=speeds)
        return statistics.fmean(r.latency_s for r in Simulator(trace, make_policy(policy), model, cfg).run().records)

    even, uneven = (1.0, 1.0), (2 / 3, 4 / 3)
    assert mean_latency("fcfs-rr", even) == pytest.approx(mean_latency("fcfs-rr", None))
    rr, balanced = mean_latency("fcfs-rr", uneven) / mean_latency("fcfs-rr", even), mean_latency("least-load", uneven) / mean_latency("least-load", even)
    assert rr > 1.3 * balanced, (rr, balanced)
