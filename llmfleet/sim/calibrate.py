"""Measure a live vLLM OpenAI-compatible server and fit a simulator cost model to it.

Probes (all with token-id prompts and ``ignore_eos`` so lengths are exact):

* prefill: one request per prompt length with ``max_tokens=1``; its latency is the prefill
  time of that many tokens (median of `repeats`);
* decode: `c` concurrent requests with a short prompt and ``max_tokens=M``; the time per
  decode step at batch `c` is ``(elapsed - prefill(c * prompt)) / M``.

A least-squares line through the decode points gives ``decode_base_s`` and
``decode_per_seq_s``; the prefill points become the piecewise-linear knots. The JSON it
writes loads with ``llmfleet sim run --cost-model FILE``.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

from llmfleet.core.clock import Clock, RealClock
from llmfleet.policies.registry import make_policy
from llmfleet.sim.costmodel import CostModel
from llmfleet.sim.simulator import SimConfig, Simulator
from llmfleet.sim.traces import TraceRequest


@dataclass(frozen=True)
class Measurements:
    prefill: list[tuple[int, float]]  # (prompt tokens, seconds)
    decode: list[tuple[int, float]]  # (concurrency, seconds per decode step)


def _prompt(n: int, offset: int) -> list[int]:
    # Distinct token ids per probe so the engine's prefix cache cannot shortcut the prefill.
    return [(offset * 7919 + i) % 1000 + 10 for i in range(n)]


async def measure(
    client: object,
    prompt_lengths: Sequence[int] = (16, 64, 256, 1024),
    concurrency: Sequence[int] = (1, 4, 16),
    decode_tokens: int = 32,
    decode_prompt: int = 16,
    repeats: int = 3,
    clock: Clock | None = None,
) -> Measurements:
    """Run the probes against an `llmfleet.engine.client.EngineClient`-like object."""
    clock = clock or RealClock()
    complete = client.complete  # type: ignore[attr-defined]
    probe = 0
    prefill: list[tuple[int, float]] = []
    for n in prompt_lengths:
        times = []
        for _ in range(repeats):
            probe += 1
            t0 = clock.now()
            await complete(_prompt(n, probe), 1, ignore_eos=True, request_id=f"cal-p{n}-{probe}")
            times.append(clock.now() - t0)
        prefill.append((int(n), statistics.median(times)))
    short_prefill = _interp(prefill, decode_prompt)
    decode: list[tuple[int, float]] = []
    for c in concurrency:
        times = []
        for _ in range(repeats):
            probe += 1
            t0 = clock.now()
            await asyncio.gather(
                *(
                    complete(
                        _prompt(decode_prompt, probe * 1000 + i),
                        decode_tokens,
                        ignore_eos=True,
                        request_id=f"cal-d{c}-{probe}-{i}",
                    )
                    for i in range(c)
                )
            )
            times.append(clock.now() - t0)
        elapsed = statistics.median(times)
        per_step = max(
            1e-6,
            (elapsed - _interp(prefill, decode_prompt * c) if c > 1 else elapsed - short_prefill)
            / decode_tokens,
        )
        decode.append((int(c), per_step))
    return Measurements(prefill=prefill, decode=decode)


def _interp(points: Sequence[tuple[int, float]], x: float) -> float:
    pts = sorted(points)
    if x <= pts[0][0]:
        return pts[0][1] * x / pts[0][0] if pts[0][0] else pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    (x0, y0), (x1, y1) = pts[-2], pts[-1]
    return y1 + (y1 - y0) * (x - x1) / (x1 - x0)


def fit(m: Measurements, name: str, kv_capacity_tokens: int, source: str) -> CostModel:
    if len(m.prefill) < 2 or not m.decode:
        raise ValueError("need at least two prefill lengths and one decode concurrency")
    if len(m.decode) >= 2:
        xs = [c for c, _ in m.decode]
        ys = [t for _, t in m.decode]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
        slope = max(0.0, slope)
        base = my - slope * mx
        if base <= 0.0:
            # Timing noise made the line steeper than a decode step allows (every step has a
            # fixed cost): anchor it at the smallest batch, whose step time is at least half fixed.
            c0, y0 = min(m.decode)
            slope = min(slope, y0 / (2 * c0))
            base = y0 - slope * c0
    else:
        base, slope = m.decode[0][1], 0.0
    knots = sorted(dict(m.prefill).items())
    xs_k = (0.0, *[float(x) for x, _ in knots])
    ys_k = (min(base, knots[0][1]), *[max(0.0, y) for _, y in knots])
    # Enforce increasing knots in tokens (already) and non-decreasing times for a sane model.
    ys_mono = [ys_k[0]]
    for y in ys_k[1:]:
        ys_mono.append(max(y, ys_mono[-1]))
    return CostModel(
        name=name,
        prefill_knots_tokens=xs_k,
        prefill_knots_s=tuple(ys_mono),
        decode_base_s=base,
        decode_per_seq_s=slope,
        decode_per_ctx_token_s=0.0,
        overlap_s=base,
        kv_capacity_tokens=kv_capacity_tokens,
        source=source,
    )


async def calibrate_engine(
    url: str,
    prompt_lengths: Sequence[int],
    concurrency: Sequence[int],
    decode_tokens: int,
    repeats: int,
    kv_capacity_tokens: int | None,
    timeout: float = 120.0,
) -> CostModel:
    from llmfleet.engine.client import EngineClient

    async with EngineClient(url, timeout=timeout) as client:
        if not await client.health():
            raise RuntimeError(f"engine at {url} is not healthy (GET /health did not return 200)")
        model = await client.model()
        if kv_capacity_tokens is None:
            # vLLM reports its KV pool in `vllm:cache_config_info`; the client parses it.
            from llmfleet.engine.errors import EngineError

            try:
                kv_capacity_tokens = (await client.load()).kv_capacity_tokens or None
            except EngineError:
                kv_capacity_tokens = None
        m = await measure(client, prompt_lengths, concurrency, decode_tokens, repeats=repeats)
    return fit(
        m,
        name=f"calibrated:{model}",
        kv_capacity_tokens=kv_capacity_tokens or (1 << 16),
        source=f"llmfleet sim calibrate --engine {url}",
    )


# ----------------------------------------------------------------------------- the live fleet
# What the probes above cannot see: on a live fleet the sidecars, the dispatcher and the client
# share the host with the engines. The terms below come from one window of real traffic, from
# the histograms the engines (vLLM) and the dispatcher already export, and from the client's
# own clock; `with_dataplane` puts them into a probed model.
ENGINE_HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:inter_token_latency_seconds",
)
DISPATCHER_HISTOGRAMS = (
    "llmfleet_dispatcher_ttft_seconds",
    "llmfleet_dispatcher_queue_seconds",
    "llmfleet_dispatcher_e2e_seconds",
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


def scrape_histograms(urls: Sequence[str], names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """(sum, count) of each named histogram, summed over the /metrics pages of `urls`."""
    import urllib.request

    totals: dict[str, tuple[float, float]] = {}
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
            for name, (t, c) in histogram_totals(resp.read().decode(), names).items():
                t0, c0 = totals.get(name, (0.0, 0.0))
                totals[name] = (t0 + t, c0 + c)
    return totals


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


def slowed(model: CostModel, k: float) -> CostModel:
    """The engine `k` times slower: prefill, decode and their overlap alike."""
    return replace(
        model,
        prefill_knots_s=tuple(s * k for s in model.prefill_knots_s),
        decode_base_s=model.decode_base_s * k,
        decode_per_seq_s=model.decode_per_seq_s * k,
        decode_per_ctx_token_s=model.decode_per_ctx_token_s * k,
        overlap_s=model.overlap_s * k,
    )


def fit_engine_slowdown(
    model: CostModel, trace: Sequence[TraceRequest], cfg: SimConfig, engine_latency_s: float, iterations: int = 40
) -> float:
    """How many times slower the engines ran under the fleet's traffic than their probes say.

    The engines' own mean latency over a calibration replay (vLLM's TTFT plus decode time: from
    the request reaching the engine to its last token) is matched by the simulator replaying the
    same requests straight to its engines (`fcfs-rr`, no data plane) with the probed model slowed
    by k; k is found by bisection (latency grows with k). Prefill and decode slow together, so
    the simulator still charges each prefill chunk to the decode steps it joins: the measured
    inter-token latency already contains those stalls, and a decode step set to it counted them
    twice (section 5 of bench/DATAPLANE.md)."""
    bare = replace(model, dispatch_delay_s=0.0, first_token_relay_s=0.0, finish_relay_s=0.0, end_notice_s=0.0)

    def latency(k: float) -> float:
        records = Simulator(list(trace), make_policy("fcfs-rr"), slowed(bare, k), cfg).run().records
        return statistics.fmean(r.latency_s for r in records)

    lo, hi = 0.05, 50.0
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if latency(mid) < engine_latency_s:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def with_slowdown(model: CostModel, terms: DataPlaneTerms, k: float, source: str) -> CostModel:
    """The probed model slowed by `k` (see `fit_engine_slowdown`), with the data plane's delays."""
    return replace(
        slowed(model, k),
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
