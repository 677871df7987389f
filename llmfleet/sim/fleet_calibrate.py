"""Calibrate the simulator on a live fleet: what the data plane adds, and how fast the engines
really run under traffic.

The probes of `llmfleet.sim.calibrate` time quiet engines one probe at a time. On a live fleet
the sidecars, the dispatcher and the client share the host with the engines, and the engines
run slower under traffic than their probes say. `measure_window` replays one window of a trace
through a running dispatcher and reads, around it, the histograms the engines (vLLM) and the
dispatcher already export, and the client's own clock. `calibrate_on_fleet` turns that window
into a cost model: the probed model slowed by a factor fitted on the window
(`fit_engine_slowdown`), plus the data plane's delays (`dataplane_terms`). `llmfleet sim
calibrate --fleet` and bench/sim_fidelity.py both use it.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from llmfleet.core.config import SchedulingConfig
from llmfleet.policies.registry import make_policy
from llmfleet.sim.costmodel import CostModel
from llmfleet.sim.simulator import SimConfig, Simulator
from llmfleet.sim.traces import TraceRequest

ENGINE_HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:request_prefill_time_seconds",  # scheduled into a batch to the first token: no queue in it
)
DISPATCHER_HISTOGRAMS = (
    "llmfleet_dispatcher_ttft_seconds",
    "llmfleet_dispatcher_queue_seconds",
    "llmfleet_dispatcher_e2e_seconds",
    "llmfleet_dispatcher_slice_seconds",  # its count: slices run, one per request unless sliced
)


def histogram_totals(text: str, names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """(sum, count) of each named histogram in a Prometheus exposition, summed over labels."""
    from prometheus_client.parser import text_string_to_metric_families

    out = dict.fromkeys(names, (0.0, 0.0))
    for family in text_string_to_metric_families(text):
        if family.name not in out:
            continue
        total, count = out[family.name]
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
        out[family.name] = (total, count)
    return out


def scrape_page(url: str, names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """(sum, count) of each named histogram on the /metrics page of `url`."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        return histogram_totals(resp.read().decode(), names)


def gauge_values(text: str, names: Mapping[str, str]) -> dict[str, float]:
    """The named gauges in a Prometheus exposition, under the keys `names` maps them to (the first
    sample of each; a gauge the page lacks is left out)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {names[f.name]: f.samples[0].value for f in text_string_to_metric_families(text) if f.name in names and f.samples}


def scrape_gauges(url: str, names: Mapping[str, str]) -> dict[str, float]:
    """`gauge_values` of the /metrics page of `url`."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        return gauge_values(resp.read().decode(), names)


def summed(pages: Sequence[dict[str, tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    """(sum, count) of each histogram over several pages' totals."""
    out: dict[str, tuple[float, float]] = {}
    for page in pages:
        for name, (total, count) in page.items():
            t0, c0 = out.get(name, (0.0, 0.0))
            out[name] = (t0 + total, c0 + count)
    return out


def scrape_histograms(urls: Sequence[str], names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """(sum, count) of each named histogram, summed over the /metrics pages of `urls`."""
    return summed([scrape_page(url, names) for url in urls])


def histogram_means(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean of each histogram over what was observed between two scrapes (NaN when nothing was)."""
    means = {}
    for name, (total, count) in after.items():
        t0, c0 = before.get(name, (0.0, 0.0))
        means[name] = (total - t0) / (count - c0) if count > c0 else float("nan")
    return means


@dataclass(frozen=True)
class DataPlaneTerms:
    decode_step_s: float  # the engines' mean inter-token latency under this traffic
    dispatch_delay_s: float
    first_token_relay_s: float
    finish_relay_s: float
    end_notice_s: float = 0.0


def dataplane_terms(engine: dict[str, float], dispatcher: dict[str, float], client_ttft_s: float, client_e2e_s: float) -> DataPlaneTerms:
    """Split the client's mean TTFT and latency into the engine's part and the data plane's.

    The dispatcher's TTFT runs from a request's arrival to its first token leaving the dispatcher;
    the engine's, from the request reaching the engine to the first token leaving it. What lies
    between, less the time queued at the dispatcher, is the way there (dispatch delay). The rest
    of the client's TTFT is the first token's way back; the rest of its latency, once the engine's
    own latency (TTFT plus decode) is taken off, is the last token's way back. The dispatcher's own
    latency, split the same way, leaves the part of that way back that ends at the dispatcher:
    when it learns that a slot is free (end notice)."""
    engine_ttft = engine["vllm:time_to_first_token_seconds"]
    queued = dispatcher["llmfleet_dispatcher_queue_seconds"]
    dispatch = max(0.0, dispatcher["llmfleet_dispatcher_ttft_seconds"] - queued - engine_ttft)
    engine_e2e = engine_ttft + engine["vllm:request_decode_time_seconds"]
    dispatcher_e2e = dispatcher.get("llmfleet_dispatcher_e2e_seconds", math.nan)
    notice = dispatcher_e2e - queued - dispatch - engine_e2e
    return DataPlaneTerms(
        decode_step_s=engine["vllm:inter_token_latency_seconds"],
        dispatch_delay_s=dispatch,
        first_token_relay_s=max(0.0, client_ttft_s - queued - dispatch - engine_ttft),
        finish_relay_s=max(0.0, client_e2e_s - queued - dispatch - engine_e2e),
        end_notice_s=max(0.0, notice) if notice == notice else 0.0,  # NaN: not scraped
    )


def fit_engine_slowdown(
    model: CostModel,
    trace: Sequence[TraceRequest],
    cfg: SimConfig,
    engine_latency_s: float,
    iterations: int = 40,
    config: SchedulingConfig | None = None,
    prefill_k: float | None = None,
) -> float:
    """How many times slower the engines ran under the fleet's traffic than their probes say.

    The mean latency measured over a calibration replay, from a request's arrival to its last
    token leaving the engine (vLLM's TTFT plus decode time, plus the time it was held at the
    dispatcher), is matched by the simulator replaying the same requests under the same policy
    (`config`; default `fcfs-rr`, which holds nothing) with no data plane, and the probed model
    slowed by k; k is found by bisection (latency grows with k). Prefill slows by the same k
    unless `prefill_k` is given (`fit_engine_speeds` fits it apart). Either way the simulator
    still charges each prefill chunk to the decode steps it joins: the measured inter-token
    latency already contains those stalls, and a decode step set to it counted them twice
    (section 5 of bench/DATAPLANE.md)."""
    return _bisect(lambda k: _mean_sim(model, trace, cfg, config, k, prefill_k, "latency_s"), engine_latency_s, iterations)


def fit_engine_speeds(
    model: CostModel,
    trace: Sequence[TraceRequest],
    cfg: SimConfig,
    engine_latency_s: float,
    engine_prefill_s: float,
    config: SchedulingConfig | None = None,
    iterations: int = 18,
) -> tuple[float, float]:
    """Decode and prefill slowdowns `(k, prefill_k)`, fitted apart: the pair at which the
    simulator gives both the engines' mean latency (as `fit_engine_slowdown`) and their mean
    prefill time (vLLM's `request_prefill_time`: from a request's first batch to its first token,
    so no wait for a slot is in it, which would make the fit chase the queueing instead). For each
    prefill factor tried, `k` is fitted on the latency; the prefill factor is bisected on the
    prefill time, which grows with it.

    Why apart: the probes time prefill directly at the prompt lengths traffic has, while decode
    under traffic runs at longer contexts and fuller, mixed batches than the probes', so one
    factor fitted on decode-dominated latency also slowed every prefill, and first tokens came
    out late (section 5 of bench/DATAPLANE.md)."""

    def prefill_at(prefill_k: float) -> float:
        k = fit_engine_slowdown(model, trace, cfg, engine_latency_s, iterations, config, prefill_k)
        return _mean_sim(model, trace, cfg, config, k, prefill_k, "engine_prefill_s")

    prefill_k = _bisect(prefill_at, engine_prefill_s, iterations)
    return fit_engine_slowdown(model, trace, cfg, engine_latency_s, iterations, config, prefill_k), prefill_k


def _mean_sim(
    model: CostModel, trace: Sequence[TraceRequest], cfg: SimConfig, config: SchedulingConfig | None,
    k: float, prefill_k: float | None, field: str,
) -> float:
    """The mean of a record field over the simulator's replay of `trace` with no data plane."""
    bare = replace(model, dispatch_delay_s=0.0, first_token_relay_s=0.0, finish_relay_s=0.0, end_notice_s=0.0)
    policy = make_policy(config or SchedulingConfig(policy="fcfs-rr"))
    records = Simulator(list(trace), policy, bare.slowed(k, prefill_k), cfg).run().records
    return statistics.fmean(getattr(r, field) for r in records)


def _bisect(measure: Callable[[float], float], target: float, iterations: int) -> float:
    """The factor in [0.05, 50] at which `measure`, increasing in it, reaches `target` (geometric)."""
    lo, hi = 0.05, 50.0
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if measure(mid) < target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def with_slowdown(
    model: CostModel, terms: DataPlaneTerms, k: float, source: str, prefill_k: float | None = None
) -> CostModel:
    """The probed model slowed by `k` (prefill by `prefill_k`, default `k`; see
    `fit_engine_speeds`), with the data plane's delays."""
    return replace(
        model.slowed(k, prefill_k),
        dispatch_delay_s=terms.dispatch_delay_s,
        first_token_relay_s=terms.first_token_relay_s,
        finish_relay_s=terms.finish_relay_s,
        end_notice_s=terms.end_notice_s,
        source=source,
    )


def with_dataplane(model: CostModel, terms: DataPlaneTerms, source: str) -> CostModel:
    """The probed model with the decode step measured under traffic and the data plane's delays.

    The decode step becomes flat at the engines' measured inter-token latency. On the CPU fleet
    the probes' per-sequence slope is noise (0 to 1.2 ms per sequence across repeated runs, on
    the same engines), while the traffic's own average is measured over thousands of steps; a
    line anchored at one batch size with a noisy slope was 25% off at the batches traffic runs.

    Superseded by `with_slowdown` and kept for comparison (bench/sim_fidelity.py reports both):
    the measured inter-token latency already holds the prefill stalls that the simulator adds
    to each step again, and the prefill stays at the quiet engines' speed, so TTFT came out
    about 30% low and latency up to 14% high on the CPU fleet."""
    return replace(
        model,
        decode_base_s=terms.decode_step_s,
        decode_per_seq_s=0.0,
        decode_per_ctx_token_s=0.0,
        overlap_s=min(model.overlap_s, terms.decode_step_s),
        dispatch_delay_s=terms.dispatch_delay_s,
        first_token_relay_s=terms.first_token_relay_s,
        finish_relay_s=terms.finish_relay_s,
        end_notice_s=terms.end_notice_s,
        source=source,
    )


# ----------------------------------------------------------------------------- one window, live
class CalibrationError(RuntimeError):
    """The window cannot calibrate the simulator (failed requests, slices, missing histograms)."""


@dataclass(frozen=True)
class Window:
    """What one replayed window measured."""

    requests: int
    slices: int  # slice assignments the dispatcher made; one per request unless the policy slices
    engine_means: dict[str, float]  # over every engine
    dispatcher_means: dict[str, float]
    client_ttft_s: float
    client_e2e_s: float
    per_engine: tuple[dict[str, float], ...] = ()  # each engine's own means, in the order of its URL

    @property
    def engine_speeds(self) -> tuple[float, ...]:
        """Each engine's time per token relative to the engines' average (its mean inter-token
        latency over theirs; 1.0 for an engine that served nothing). Engines sharing a host's
        cores do not run at one speed: on the 2-core CPU fleet one engine's tokens took 2-4x as
        long as the other's in the same replay. A slower engine also runs fuller batches, whose
        steps take longer, so this somewhat overstates the spread (bench/DATAPLANE.md, section 5)."""
        itl = [e.get("vllm:inter_token_latency_seconds", math.nan) for e in self.per_engine]
        seen = [x for x in itl if not math.isnan(x) and x > 0]
        if not seen:
            return (1.0,) * len(itl)
        mean = statistics.fmean(seen)
        return tuple(x / mean if not math.isnan(x) and x > 0 else 1.0 for x in itl)

    @property
    def terms(self) -> DataPlaneTerms:
        return dataplane_terms(self.engine_means, self.dispatcher_means, self.client_ttft_s, self.client_e2e_s)

    @property
    def engine_prefill_s(self) -> float:
        """A request's first batch to its first token in vLLM: its prefill, with no wait in it."""
        return self.engine_means["vllm:request_prefill_time_seconds"]

    @property
    def engine_latency_s(self) -> float:
        """Arrival to the last token leaving the engine: held at the dispatcher, then in vLLM."""
        e = self.engine_means
        queued = self.dispatcher_means.get("llmfleet_dispatcher_queue_seconds", 0.0)
        return e["vllm:time_to_first_token_seconds"] + e["vllm:request_decode_time_seconds"] + queued


async def measure_window(
    dispatcher: str,
    engine_urls: Sequence[str],
    dispatcher_metrics_url: str,
    workload: Sequence[object],
    one_slice_each: bool = True,
    hidden_length: bool = False,
) -> Window:
    """Replay `workload` (`llmfleet.demo.workload` requests, exact lengths) through the dispatcher
    at `dispatcher` and read the engines' and the dispatcher's histograms around it.

    Nothing else may use the fleet meanwhile: the histograms count every request. Raises
    `CalibrationError` when a request fails, when a histogram is absent, or, with
    `one_slice_each`, when the dispatcher ran more than one slice per request (the terms of a
    calibration assume each request is one engine request). With `hidden_length` an EOS ends each
    request at its length and the scheduler must predict it (as in the e2e benchmark); otherwise
    `max_tokens` fixes it and the scheduler knows it."""
    from llmfleet.demo.replay import replay

    def scrape() -> tuple[list[dict[str, tuple[float, float]]], dict[str, tuple[float, float]]]:
        engines = [scrape_page(url, ENGINE_HISTOGRAMS) for url in engine_urls]
        return engines, scrape_histograms([dispatcher_metrics_url], DISPATCHER_HISTOGRAMS)

    each0, d0 = await asyncio.to_thread(scrape)
    outcomes = await replay(dispatcher, workload, hidden_length=hidden_length)  # type: ignore[arg-type]
    each1, d1 = await asyncio.to_thread(scrape)
    e0, e1 = summed(each0), summed(each1)
    failed = [o for o in outcomes if not o.ok or o.first_token_s is None or o.finish_s is None]
    if failed:
        raise CalibrationError(f"{len(failed)} of {len(outcomes)} requests failed (first: {failed[0].status} {failed[0].error})")
    engine_means, dispatcher_means = histogram_means(e0, e1), histogram_means(d0, d1)
    missing = [name for name, value in (engine_means | dispatcher_means).items() if math.isnan(value)]
    if missing:
        raise CalibrationError(
            f"nothing was observed in {', '.join(missing)}: are the engine URLs vLLM servers and the metrics URL the dispatcher's?"
        )
    slices = round(d1["llmfleet_dispatcher_slice_seconds"][1] - d0["llmfleet_dispatcher_slice_seconds"][1])
    if one_slice_each and slices > len(outcomes):
        raise CalibrationError(
            f"the dispatcher ran {slices} slices for {len(outcomes)} requests; the calibration needs one engine request "
            "per request: calibrate with a policy that neither slices nor preempts (e.g. fcfs-rr or least-load)"
        )
    return Window(
        requests=len(outcomes),
        slices=slices,
        engine_means=engine_means,
        dispatcher_means=dispatcher_means,
        client_ttft_s=statistics.fmean(o.first_token_s - o.arrival_s for o in outcomes),  # type: ignore[operator]
        client_e2e_s=statistics.fmean(o.finish_s - o.arrival_s for o in outcomes),  # type: ignore[operator]
        per_engine=tuple(histogram_means(b, a) for b, a in zip(each0, each1, strict=True)),
    )


@dataclass(frozen=True)
class FleetCalibration:
    model: CostModel  # the probed model slowed by `slowdown`, with the data plane's delays
    slowdown: float
    window: Window
    sim_config: SimConfig  # the simulator's fleet: the given one, with each engine's speed when measured
    prefill_slowdown: float | None = None  # fitted apart from `slowdown`; None: prefill slowed alike


def calibrate_on_fleet(
    probed: CostModel,
    window: Window,
    trace: Sequence[TraceRequest],
    cfg: SimConfig,
    config: SchedulingConfig,
    source: str,
    per_engine: bool = True,
    prefill_apart: bool = True,
) -> FleetCalibration:
    """The cost model for the fleet `window` was measured on (`trace`: the same requests;
    `config`: the policy the dispatcher ran). With `per_engine`, and one engine measured per
    simulated instance, each instance runs at its engine's measured speed (`Window.engine_speeds`)
    and the slowdown is fitted around them. With `prefill_apart` (the default), prefill's slowdown
    is fitted on its own (`fit_engine_speeds`); without, one factor slows both."""
    speeds = window.engine_speeds
    if per_engine and len(speeds) == cfg.instances:
        cfg = replace(cfg, instance_speeds=speeds)
    if prefill_apart:
        k, pk = fit_engine_speeds(probed, trace, cfg, window.engine_latency_s, window.engine_prefill_s, config=config)
        return FleetCalibration(with_slowdown(probed, window.terms, k, source, pk), k, window, cfg, pk)
    k = fit_engine_slowdown(probed, trace, cfg, window.engine_latency_s, config=config)
    return FleetCalibration(with_slowdown(probed, window.terms, k, source), k, window, cfg)
