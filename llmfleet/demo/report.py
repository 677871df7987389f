"""Summaries, tables and plots of live fleet runs, in the simulator's results schema."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmfleet.demo.replay import Outcome
from llmfleet.sim.metrics import RESULT_KEYS, Slo


def summarize_outcomes(policy: str, outcomes: Sequence[Outcome], busy_s: Sequence[float]) -> dict[str, Any]:
    """One `results` entry: latencies from arrival to last token, over completed requests."""
    done = [o for o in outcomes if o.ok and o.finish_s is not None]
    lat = np.array([o.finish_s - o.arrival_s for o in done if o.finish_s is not None])
    ttft = np.array([o.first_token_s - o.arrival_s for o in done if o.first_token_s is not None])
    tokens = sum(o.tokens for o in done)
    span = (max(o.finish_s for o in done if o.finish_s) - min(o.arrival_s for o in done)) if done else 0.0
    mean_busy = float(np.mean(busy_s)) if len(busy_s) else 0.0
    return {
        "policy": policy,
        "completed": len(done),
        "mean_latency_s": float(lat.mean()) if lat.size else math.nan,
        "p50_latency_s": float(np.percentile(lat, 50)) if lat.size else math.nan,
        "p99_latency_s": float(np.percentile(lat, 99)) if lat.size else math.nan,
        "mean_ttft_s": float(ttft.mean()) if ttft.size else math.nan,
        "p99_ttft_s": float(np.percentile(ttft, 99)) if ttft.size else math.nan,
        "throughput_tok_s": tokens / span if span > 0 else math.nan,
        "load_imbalance": max(busy_s) / mean_busy if mean_busy > 0 else 1.0,
        "slo_attainment": Slo().attainment(
            (o.first_token_s - o.arrival_s, o.finish_s - o.arrival_s, o.tokens)
            for o in done
            if o.first_token_s is not None and o.finish_s is not None
        ),
        # Diagnostics beyond the schema, dropped by `results_json`.
        "failed": len(outcomes) - len(done),
        "wrong_length": sum(1 for o in done if o.tokens != o.expected_tokens),
        "retries": sum(o.retries for o in outcomes),
    }


def results_json(trace: str, instances: int, rate_scale: float, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "trace": trace,
        "instances": instances,
        "rate_scale": rate_scale,
        "results": [{k: r[k] for k in RESULT_KEYS} for r in results],
    }


def ratio_rows(results: Sequence[dict[str, Any]], baseline: str = "fcfs-rr") -> dict[str, dict[str, float]]:
    """Each policy's mean and p99 latency and throughput as a ratio of the baseline's."""
    base = next((r for r in results if r["policy"] == baseline), None)
    if base is None:
        return {}
    return {
        r["policy"]: {
            "mean_latency_ratio": r["mean_latency_s"] / base["mean_latency_s"],
            "p99_latency_ratio": r["p99_latency_s"] / base["p99_latency_s"],
            "throughput_ratio": r["throughput_tok_s"] / base["throughput_tok_s"],
        }
        for r in results
    }


def print_table(results: Sequence[dict[str, Any]], baseline: str = "fcfs-rr") -> None:
    from rich.console import Console
    from rich.table import Table

    ratios = ratio_rows(results, baseline)
    table = Table(title="Live fleet: latency from arrival to last token (seconds)")
    for col in ("policy", "done", "fail", "mean", "p50", "p99", "TTFT", "tok/s", "imbal.", "mean ratio", "p99 ratio"):
        table.add_column(col, justify="right" if col != "policy" else "left", no_wrap=True)
    for r in results:
        q = ratios.get(r["policy"], {})
        table.add_row(
            r["policy"], str(r["completed"]), str(r.get("failed", 0)),
            f"{r['mean_latency_s']:.2f}", f"{r['p50_latency_s']:.2f}", f"{r['p99_latency_s']:.2f}",
            f"{r['mean_ttft_s']:.2f}", f"{r['throughput_tok_s']:.0f}", f"{r['load_imbalance']:.2f}",
            f"{q.get('mean_latency_ratio', math.nan):.2f}", f"{q.get('p99_latency_ratio', math.nan):.2f}",
        )
    table.caption = f"ratios are to {baseline}, measured in the same run; TTFT is the mean time to first token"
    Console(width=max(110, Console().width)).print(table)


def plot(outcomes_by_policy: Mapping[str, Sequence[Outcome]], results: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Latency CDFs per policy, beside mean/p99 bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cdf, ax_bar) = plt.subplots(1, 2, figsize=(11, 4.2))
    for policy, outcomes in outcomes_by_policy.items():
        lat = np.sort([o.finish_s - o.arrival_s for o in outcomes if o.ok and o.finish_s is not None])
        if lat.size:
            ax_cdf.plot(lat, np.arange(1, lat.size + 1) / lat.size, label=policy)
    ax_cdf.set_xlabel("latency (s)")
    ax_cdf.set_ylabel("fraction of requests")
    ax_cdf.set_title("Latency CDF")
    ax_cdf.grid(alpha=0.3)
    ax_cdf.legend()
    names = [r["policy"] for r in results]
    x = np.arange(len(names))
    ax_bar.bar(x - 0.2, [r["mean_latency_s"] for r in results], 0.4, label="mean")
    ax_bar.bar(x + 0.2, [r["p99_latency_s"] for r in results], 0.4, label="p99")
    ax_bar.set_xticks(x, names)
    ax_bar.set_ylabel("latency (s)")
    ax_bar.set_title("Mean and p99 latency")
    ax_bar.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(out_dir: Path, payload: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
