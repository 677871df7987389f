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

# The baseline every ratio is to, and the label of its earlier replay of the same requests at the
# same rate (the demo's rate search keeps it; `llmfleet.demo.run.replay_order` runs the baseline's
# own replay after every other policy, so the two bracket the comparison).
BASELINE = "fcfs-rr"


def earlier_label(baseline: str) -> str:
    """The results label of `baseline`'s earlier replay."""
    return f"{baseline} (earlier)"


EARLIER = earlier_label(BASELINE)


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


BOOTSTRAP_RESAMPLES = 2000
_CI_STATS = {  # ratio name -> (per-request value, statistic over a sample)
    "mean_ttft_ratio": ("ttft", "mean"),
    "mean_latency_ratio": ("latency", "mean"),
    "p99_latency_ratio": ("latency", "p99"),
}


def _paired(base: Sequence[Outcome], other: Sequence[Outcome], value: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-request values of the requests both runs completed, in the same order (the demo
    replays the same requests under every policy, so each one is its own control)."""

    def per_request(outcomes: Sequence[Outcome]) -> dict[str, float]:
        out = {}
        for o in outcomes:
            if o.ok and o.finish_s is not None and o.first_token_s is not None:
                out[o.request_id] = (o.first_token_s if value == "ttft" else o.finish_s) - o.arrival_s
        return out

    a, b = per_request(base), per_request(other)
    ids = sorted(a.keys() & b.keys())
    return np.array([a[i] for i in ids]), np.array([b[i] for i in ids])


def bootstrap_ratio_ci(
    base: Sequence[Outcome], other: Sequence[Outcome], value: str, stat: str,
    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
) -> tuple[float, float]:  # fmt: skip
    """95% confidence interval of stat(other) / stat(base), by a paired bootstrap over requests."""
    a, b = _paired(base, other, value)
    if len(a) < 2:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    if stat == "mean":
        ra, rb = a[idx].mean(axis=1), b[idx].mean(axis=1)
    else:
        ra, rb = np.percentile(a[idx], 99, axis=1), np.percentile(b[idx], 99, axis=1)
    ratios = rb / ra
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def ratio_rows(
    results: Sequence[dict[str, Any]],
    baseline: str = BASELINE,
    outcomes_by_policy: Mapping[str, Sequence[Outcome]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each policy's mean TTFT, mean and p99 latency and throughput as a ratio of the baseline's;
    with the outcomes, `ci95` holds a paired bootstrap 95% interval for each latency ratio."""
    base = next((r for r in results if r["policy"] == baseline), None)
    if base is None:
        return {}
    rows: dict[str, dict[str, Any]] = {}
    for r in results:
        row: dict[str, Any] = {
            "mean_ttft_ratio": r["mean_ttft_s"] / base["mean_ttft_s"],
            "mean_latency_ratio": r["mean_latency_s"] / base["mean_latency_s"],
            "p99_latency_ratio": r["p99_latency_s"] / base["p99_latency_s"],
            "throughput_ratio": r["throughput_tok_s"] / base["throughput_tok_s"],
        }
        if outcomes_by_policy and r["policy"] in outcomes_by_policy and baseline in outcomes_by_policy:
            row["ci95"] = {
                name: list(bootstrap_ratio_ci(outcomes_by_policy[baseline], outcomes_by_policy[r["policy"]], value, stat))
                for name, (value, stat) in _CI_STATS.items()
            }
        rows[r["policy"]] = row
    return rows


def _with_ci(ratio: float, ci: Sequence[float] | None) -> str:
    if ci is None or any(math.isnan(v) for v in ci):
        return f"{ratio:.2f}"
    return f"{ratio:.2f} [{ci[0]:.2f}-{ci[1]:.2f}]"


def print_table(
    results: Sequence[dict[str, Any]], baseline: str = BASELINE,
    outcomes_by_policy: Mapping[str, Sequence[Outcome]] | None = None,
) -> None:  # fmt: skip
    from rich.console import Console
    from rich.table import Table

    ratios = ratio_rows(results, baseline, outcomes_by_policy)
    table = Table(title="Live fleet: latency from arrival to last token (seconds)")
    columns = ("policy", "done", "fail", "mean", "p50", "p99", "TTFT", "tok/s", "imbal.",
               "TTFT ratio", "mean ratio", "p99 ratio", "tok/s ratio")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right" if col != "policy" else "left", no_wrap=True)
    for r in results:
        q = ratios.get(r["policy"], {})
        ci = q.get("ci95", {})
        table.add_row(
            r["policy"], str(r["completed"]), str(r.get("failed", 0)),
            f"{r['mean_latency_s']:.2f}", f"{r['p50_latency_s']:.2f}", f"{r['p99_latency_s']:.2f}",
            f"{r['mean_ttft_s']:.2f}", f"{r['throughput_tok_s']:.0f}", f"{r['load_imbalance']:.2f}",
            *(_with_ci(q.get(k, math.nan), ci.get(k)) for k in ("mean_ttft_ratio", "mean_latency_ratio", "p99_latency_ratio")),
            f"{q.get('throughput_ratio', math.nan):.2f}",
        )  # fmt: skip
    table.caption = (f"rows in the order they ran; ratios are to {baseline}, measured in the same run, with paired bootstrap 95% intervals over "
                     "the same requests; TTFT is the mean time to first token")  # fmt: skip
    console = Console(width=max(150, Console().width))
    console.print(table)
    for note in (queue_note(results, baseline), drift_note(ratios, baseline)):
        if note:
            console.print(note)


# Below this share of the baseline's latency spent before the first token, the baseline hardly
# queued and no order can shorten much. In the fair e2e runs of bench/DATAPLANE.md sections 3-4,
# llmfleet met its mean and TTFT targets in none of the 21 replays where fcfs-rr's share was below
# 0.30; in the run with the oracle beside it (shares 0.07-0.12), even every length known gave a
# mean of 0.90-1.03 of fcfs-rr's. (The same share is what `llmfleet.demo.load.queue_share`
# measures from the outcomes, and what the demo's rate search aims at.)
LITTLE_QUEUE_SHARE = 0.30


def queue_note(results: Sequence[dict[str, Any]], baseline: str = BASELINE) -> str | None:
    """One line on how much the baseline queued, which bounds what any order can gain; a hint
    when it hardly queued. None without the baseline."""
    base = next((r for r in results if r["policy"] == baseline), None)
    if base is None or not base["mean_latency_s"]:
        return None
    share = base["mean_ttft_s"] / base["mean_latency_s"]
    line = (f"{baseline}'s first tokens took {base['mean_ttft_s']:.2f} s of its {base['mean_latency_s']:.2f} s mean "
            f"latency ({share:.0%}): the wait that any order of the requests can shorten.")  # fmt: skip
    if share < LITTLE_QUEUE_SHARE:
        line += (" That is little queue, so the policies can only tie here; a higher --rate or --queue-share gives "
                 "them a queue to differ on.")  # fmt: skip
    return line


def drift_band(ratios: Mapping[str, Mapping[str, Any]], baseline: str = BASELINE) -> float | None:
    """How far the baseline's two replays of the same requests were apart: the end of the earlier
    replay's mean-latency interval farthest from 1, as a factor >= 1. Nothing but the machine's
    speed differs between them, so a policy's ratio within this factor of 1 may be drift alone.
    None without the earlier replay."""
    row = ratios.get(earlier_label(baseline))
    ci = (row or {}).get("ci95", {}).get("mean_latency_ratio")
    if not ci or any(math.isnan(v) for v in ci):
        return None
    return max(math.exp(abs(math.log(v))) for v in ci)


def beyond_drift(ratios: Mapping[str, Mapping[str, Any]], policy: str, baseline: str = BASELINE) -> bool | None:
    """Whether `policy`'s whole mean-latency interval lies beyond the drift band, on either side
    (None without the band or the interval)."""
    band, ci = drift_band(ratios, baseline), ratios.get(policy, {}).get("ci95", {}).get("mean_latency_ratio")
    if band is None or not ci:
        return None
    return ci[1] < 1 / band or ci[0] > band


def drift_note(ratios: Mapping[str, Mapping[str, Any]], baseline: str = BASELINE) -> str | None:
    """One line on the baseline's two replays: how far the machine's drift alone moved one
    policy during the comparison, and which policies' mean latency moved further than that.
    None without the earlier replay."""
    earlier = earlier_label(baseline)
    band = drift_band(ratios, baseline)
    if band is None:
        return None
    ci = ratios[earlier]["ci95"]["mean_latency_ratio"]
    line = (f"{baseline} replayed the same requests before the other policies and again after them: the earlier "
            f"replay's mean latency was {ratios[earlier]['mean_latency_ratio']:.2f} [{ci[0]:.2f}-{ci[1]:.2f}] of the later "
            f"one's. Only the machine's speed differed, so a mean ratio within {1 / band:.2f}-{band:.2f} may be drift alone "
            "(between replays; the speed also moves within one, which the line below takes out too).")  # fmt: skip
    verdicts = {p: beyond_drift(ratios, p, baseline) for p in ratios if p not in (baseline, earlier)}
    beyond = [p for p, outside in verdicts.items() if outside]
    overlapping = [p for p, outside in verdicts.items() if outside is False]
    if beyond:
        line += f" Outside it, interval and all: {', '.join(beyond)}."
    if overlapping:
        line += f" Overlapping it: {', '.join(overlapping)}."
    return line


def adjusted_note(adjusted: Mapping[str, Any], baseline: str = BASELINE) -> str:
    """One line on the ratios with the machine's drift taken out (`llmfleet.demo.drift.drift_adjusted`)."""
    replays = adjusted["replays"]
    speeds = ", ".join(f"x{r['engine_slowdown']:.2f}" for r in replays)
    off = max(abs(r["live_latency_s"] / r["simulated_latency_s"] - 1) for r in replays)
    rows = {e: row for e, row in adjusted["ratios"].items() if e != baseline}
    latency = ", ".join(f"{e} {_with_ci(row['adjusted_ratio'], row.get('adjusted_ratio_ci95'))}" for e, row in rows.items())
    ttft = ", ".join(f"{e} {_with_ci(row['adjusted_ttft_ratio'], row.get('adjusted_ttft_ratio_ci95'))}"
                     for e, row in rows.items() if "adjusted_ttft_ratio" in row)  # fmt: skip
    course = f", fitted {adjusted['phase_s']:g} s at a time" if adjusted.get("phase_s") else ""
    return (f"With the machine's drift taken out (the simulator calibrated on this fleet, run at each replay's own "
            f"engine speed{course}: on average {speeds} in the order they ran, where its mean latency was within "
            f"{off:.0%} of the live one): mean latency at one speed, to {baseline}: {latency}"
            + (f"; mean TTFT: {ttft}" if ttft else "") + ". A model's estimate, not a measurement; the intervals "
            "cover the requests' sampling, not the model's error (bench/DATAPLANE.md, section 4).")  # fmt: skip


def plot(outcomes_by_policy: Mapping[str, Sequence[Outcome]], results: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Per-request latency and TTFT CDFs per policy, beside mean/p99 bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cdf, ax_ttft, ax_bar) = plt.subplots(1, 3, figsize=(15, 4.2))
    for policy, outcomes in outcomes_by_policy.items():
        done = [o for o in outcomes if o.ok and o.finish_s is not None]
        lat = np.sort([o.finish_s - o.arrival_s for o in done if o.finish_s is not None])
        ttft = np.sort([o.first_token_s - o.arrival_s for o in done if o.first_token_s is not None])
        if lat.size:
            ax_cdf.plot(lat, np.arange(1, lat.size + 1) / lat.size, label=policy)
        if ttft.size:
            ax_ttft.plot(ttft, np.arange(1, ttft.size + 1) / ttft.size, label=policy)
    for ax, what in ((ax_cdf, "latency"), (ax_ttft, "time to first token")):
        ax.set_xlabel(f"{what} (s)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{what[0].upper()}{what[1:]} CDF")
        ax.grid(alpha=0.3)
        ax.legend()
    names = [r["policy"] for r in results]
    x = np.arange(len(names))
    ax_bar.bar(x - 0.2, [r["mean_latency_s"] for r in results], 0.4, label="mean")
    ax_bar.bar(x + 0.2, [r["p99_latency_s"] for r in results], 0.4, label="p99")
    # Entries with settings (`llmfleet:starvationBoundSeconds=0.001`) are long: slant them apart.
    long_names = max(map(len, names), default=0) > 12
    ax_bar.set_xticks(x, names, rotation=20 if long_names else 0, ha="right" if long_names else "center", fontsize=8 if long_names else None)
    ax_bar.set_ylabel("latency (s)")
    ax_bar.set_title("Mean and p99 latency")
    ax_bar.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def outcome_records(outcomes: Sequence[Outcome], **tags: Any) -> list[dict[str, Any]]:
    """One plain record per request, what its client saw, under `tags` (the policy, the replay):
    the raw data behind every summary, for analyses the table does not make (e.g.
    bench/dataplane_speed_fit.py). Times are seconds from the replay's start; a request that
    failed keeps None where it saw nothing."""
    def r4(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return [
        {**tags, "request_id": o.request_id, "status": o.status, "arrival_s": r4(o.arrival_s),
         "first_token_s": r4(o.first_token_s), "finish_s": r4(o.finish_s), "tokens": o.tokens,
         "expected_tokens": o.expected_tokens, "retries": o.retries}
        for o in outcomes
    ]  # fmt: skip


def append_records(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Append records to a JSON Lines file, one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.writelines(json.dumps(r) + "\n" for r in records)


def write_results(out_dir: Path, payload: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
