"""Summaries of a simulation run, in the JSON shape other tools read.

``load_imbalance`` is the maximum over the mean of per-instance busy time (1.0 = perfectly even).
``slo_attainment`` is the share of requests that met the latency SLO: time to first token at
most ``Slo.ttft_s`` and time per output token (after the first) at most ``Slo.tpot_s``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from llmfleet.sim.simulator import SimResult

RESULT_KEYS = (
    "policy",
    "completed",
    "mean_latency_s",
    "p50_latency_s",
    "p99_latency_s",
    "mean_ttft_s",
    "p99_ttft_s",
    "throughput_tok_s",
    "load_imbalance",
    "slo_attainment",
)


@dataclass(frozen=True)
class Slo:
    """The latency SLO goodput is counted against (DistServe's TTFT + TPOT pair)."""

    ttft_s: float = 2.0
    tpot_s: float = 0.1

    def __post_init__(self) -> None:
        if self.ttft_s <= 0 or self.tpot_s <= 0:
            raise ValueError("SLO bounds must be positive")

    def met(self, ttft_s: float, latency_s: float, output_tokens: int) -> bool:
        if ttft_s > self.ttft_s:
            return False
        if output_tokens <= 1:
            return True
        return (latency_s - ttft_s) / (output_tokens - 1) <= self.tpot_s

    def attainment(self, samples: Iterable[tuple[float, float, int]]) -> float:
        """Share of (ttft_s, latency_s, output_tokens) samples that met the SLO (NaN for none)."""
        outcomes = [self.met(*s) for s in samples]
        return sum(outcomes) / len(outcomes) if outcomes else math.nan


def _percentile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of pre-sorted data."""
    if not sorted_xs:
        return math.nan
    pos = (len(sorted_xs) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize(result: SimResult, slo: Slo | None = None) -> dict[str, Any]:
    recs = result.records
    lat = sorted(r.latency_s for r in recs)
    ttft = sorted(r.ttft_s for r in recs)
    if recs:
        span = max(r.finish_s for r in recs) - min(r.arrival_s for r in recs)
        tokens = sum(r.output_tokens for r in recs)
    else:
        span, tokens = 0.0, 0
    busy = result.busy_s
    mean_busy = sum(busy) / len(busy) if busy else 0.0
    return {
        "policy": result.policy,
        "completed": len(recs),
        "mean_latency_s": sum(lat) / len(lat) if lat else math.nan,
        "p50_latency_s": _percentile(lat, 50),
        "p99_latency_s": _percentile(lat, 99),
        "mean_ttft_s": sum(ttft) / len(ttft) if ttft else math.nan,
        "p99_ttft_s": _percentile(ttft, 99),
        "throughput_tok_s": tokens / span if span > 0 else math.nan,
        "load_imbalance": max(busy) / mean_busy if mean_busy > 0 else 1.0,
        "slo_attainment": (slo or Slo()).attainment((r.ttft_s, r.latency_s, r.output_tokens) for r in recs),
    }


def extras(result: SimResult) -> dict[str, Any]:
    """Diagnostics shown in tables and benchmark files (not part of the run JSON schema)."""
    recs = result.records
    n = max(1, len(recs))
    return {
        "slices_per_request": sum(r.slices for r in recs) / n,
        "migrations_per_request": sum(r.migrations for r in recs) / n,
        "preemptions": sum(r.preemptions for r in recs),
        "prefix_hit_rate": result.prefix_hit_tokens
        / max(1, result.prefix_hit_tokens + result.prefill_tokens),
        "policy_errors": result.policy_errors,
        "decide_calls": result.decide_calls,
        "wall_s": result.wall_s,
        "sim_requests_per_wall_min": len(recs) / max(1e-9, result.wall_s) * 60.0,
    }


def run_json(trace: str, instances: int, rate_scale: float, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "trace": trace,
        "instances": instances,
        "rate_scale": rate_scale,
        "results": [{k: r[k] for k in RESULT_KEYS} for r in results],
    }
