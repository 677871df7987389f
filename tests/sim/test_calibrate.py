"""`llmfleet sim calibrate`: probes against a fake engine whose timing is a known linear model."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmfleet.core.clock import FakeClock
from llmfleet.sim.calibrate import fit, measure

PREFILL_PER_TOKEN = 0.0005
STEP_BASE = 0.004
STEP_PER_SEQ = 0.001


class FakeEngine:
    """Advances a fake clock as a real engine's wall time would pass."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[tuple[int, int]] = []

    async def complete(self, prompt, max_tokens, *, ignore_eos=False, request_id=None):
        assert ignore_eos and isinstance(prompt, list)
        self.calls.append((len(prompt), max_tokens))
        if request_id.startswith("cal-p"):
            self.clock.advance(len(prompt) * PREFILL_PER_TOKEN)
        else:
            # c concurrent requests: each call contributes 1/c of the shared wall time
            c = int(request_id.split("-")[1][1:])
            batch_time = c * len(prompt) * PREFILL_PER_TOKEN + max_tokens * (STEP_BASE + STEP_PER_SEQ * c)
            self.clock.advance(batch_time / c)


async def test_measure_and_fit_recover_the_engine_model() -> None:
    clock = FakeClock()
    engine = FakeEngine(clock)
    m = await measure(
        engine, prompt_lengths=(16, 64, 256), concurrency=(1, 2, 8), decode_tokens=10, repeats=2, clock=clock
    )
    model = fit(m, "fake", kv_capacity_tokens=4096, source="test")
    assert model.decode_base_s == pytest.approx(STEP_BASE, rel=1e-6)
    assert model.decode_per_seq_s == pytest.approx(STEP_PER_SEQ, rel=1e-6)
    assert model.prefill_s(64) == pytest.approx(64 * PREFILL_PER_TOKEN)
    assert model.prefill_s(160) == pytest.approx(160 * PREFILL_PER_TOKEN)
    assert len({p for p, _ in engine.calls}) >= 3


def test_noisy_decode_points_never_give_a_free_decode_step() -> None:
    from llmfleet.sim.calibrate import Measurements

    # A steep, noisy line would cross zero at batch 0; the fit keeps a positive fixed cost.
    model = fit(Measurements(prefill=[(16, 0.01), (128, 0.05)], decode=[(1, 0.002), (4, 0.030)]), "x", 1, "t")
    assert model.decode_base_s >= 0.001
    assert model.decode_base_s + model.decode_per_seq_s * 1 == pytest.approx(0.002)


def test_fit_needs_enough_points() -> None:
    from llmfleet.sim.calibrate import Measurements

    with pytest.raises(ValueError, match="two prefill"):
        fit(Measurements(prefill=[(16, 0.01)], decode=[(1, 0.01)]), "x", 1, "t")


@pytest.mark.engine
async def test_calibrate_against_the_real_engine(engine, tmp_path) -> None:
    from llmfleet.sim.calibrate import calibrate_engine
    from llmfleet.sim.costmodel import CostModel

    model = await calibrate_engine(
        engine.url, (16, 128), (1, 4), decode_tokens=32, repeats=2, kv_capacity_tokens=4096
    )
    assert model.decode_base_s > 0 and model.prefill_s(128) > 0
    path = tmp_path / "cost.json"
    model.save(path)
    assert CostModel.load(path) == model


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('vllm:cache_config_info{block_size="128",num_gpu_blocks="64",cache_dtype="auto"} 1.0\n', 8192),
        ('vllm:cache_config_info{block_size="16"} 1.0\n', None),
        ("vllm:num_requests_running 0\n", None),
    ],
)
def test_kv_capacity_is_read_from_vllm_metrics(text, expected) -> None:
    # calibrate_engine takes the capacity from the engine client's load scrape.
    from llmfleet.engine.metrics import parse_metrics

    assert (parse_metrics(text).kv_capacity_tokens or None) == expected


# ----------------------------------------------------------------------------- the live fleet
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
    from llmfleet.sim.calibrate import histogram_means, histogram_totals

    names = ("vllm:time_to_first_token_seconds", "llmfleet_dispatcher_queue_seconds", "absent_seconds")
    after = histogram_totals(EXPOSITION, names)
    assert after["vllm:time_to_first_token_seconds"] == pytest.approx((1.0, 5.0))
    assert after["llmfleet_dispatcher_queue_seconds"] == pytest.approx((0.5, 2.0))
    before = {"vllm:time_to_first_token_seconds": (0.2, 1.0)}
    means = histogram_means(before, after)
    assert means["vllm:time_to_first_token_seconds"] == pytest.approx(0.8 / 4)
    assert means["llmfleet_dispatcher_queue_seconds"] == pytest.approx(0.25)
    assert means["absent_seconds"] != means["absent_seconds"]  # NaN: nothing observed


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
    from llmfleet.sim.calibrate import dataplane_terms

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
    from llmfleet.sim.calibrate import dataplane_terms

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
    from llmfleet.sim.calibrate import DataPlaneTerms, with_dataplane
    from llmfleet.sim.costmodel import CostModel, linear_cost_model

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
    from llmfleet.sim.calibrate import scrape_histograms

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
    from llmfleet.sim.calibrate import DataPlaneTerms, fit_engine_slowdown, slowed, with_slowdown
    from llmfleet.sim.costmodel import linear_cost_model
    from llmfleet.sim.instance import EngineConfig
    from llmfleet.sim.simulator import SimConfig, Simulator
    from llmfleet.sim.traces import TraceRequest

    probed = linear_cost_model(0.0005, 0.004, decode_per_seq_s=0.0005)
    trace = [TraceRequest(f"r{i}", i * 0.3, 50 + 37 * (i % 9), 20 + 13 * (i % 7)) for i in range(60)]
    cfg = SimConfig(instances=2, engine=EngineConfig(max_running=4))
    truth = Simulator(trace, make_policy("fcfs-rr"), slowed(probed, 2.5), cfg).run().records
    measured = statistics.fmean(r.latency_s for r in truth)
    k = fit_engine_slowdown(probed, trace, cfg, measured)
    assert k == pytest.approx(2.5, rel=0.02)
    model = with_slowdown(probed, DataPlaneTerms(0.01, 0.1, 0.02, 0.03, end_notice_s=0.04), k, "fleet")
    assert model.prefill_s(300) == pytest.approx(k * probed.prefill_s(300))
    assert model.decode_step_s(4, 0) == pytest.approx(k * probed.decode_step_s(4, 0))
    assert (model.dispatch_delay_s, model.finish_relay_s, model.end_notice_s) == (0.1, 0.03, 0.04)
