"""PNG plots for sweeps and runs: latency versus load, and latency CDFs (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_vs_load(
    points: Mapping[str, Sequence[tuple[float, float, float]]], out: str | Path, title: str
) -> None:
    """points[policy] = [(rate_scale, mean_latency_s, p99_latency_s), ...]."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for policy, pts in points.items():
        pts = sorted(pts)
        xs = [p[0] for p in pts]
        axes[0].plot(xs, [p[1] for p in pts], marker="o", label=policy)
        axes[1].plot(xs, [p[2] for p in pts], marker="o", label=policy)
    for ax, what in zip(axes, ("mean", "p99"), strict=True):
        ax.set_xlabel("load (trace rate scale)")
        ax.set_ylabel(f"{what} latency (s)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def latency_cdf(latencies: Mapping[str, Sequence[float]], out: str | Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for policy, lat in latencies.items():
        xs = sorted(lat)
        if not xs:
            continue
        n = len(xs)
        ax.plot(xs, [(i + 1) / n for i in range(n)], label=policy)
    ax.set_xscale("log")
    ax.set_xlabel("request latency (s)")
    ax.set_ylabel("fraction of requests")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def attainment_vs_load(doc: Mapping, out: str | Path, title: str) -> None:
    """SLO attainment against load for every policy of a `sim capacity` result, with the
    attainment target, each policy's goodput and the overload point marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.6))
    target = doc["slo"]["attainment"]
    colors = plt.cm.tab20.colors  # more policies than the default cycle has colours
    for i, r in enumerate(doc["results"]):
        xs = [p[0] for p in r["curve"]]
        ours = r["policy"] == "llmfleet"
        line = ax.plot(
            xs,
            [p[1] for p in r["curve"]],
            marker="o",
            markersize=3,
            label=r["policy"],
            color="black" if ours else colors[(2 * i) % 20 + (i // 10) % 2],
            linewidth=2.4 if ours else 1.2,
        )[0]
        if r["goodput_rate_scale"] > 0:
            ax.axvline(r["goodput_rate_scale"], color=line.get_color(), alpha=0.35, linestyle=":")
    ax.axhline(target, color="black", linewidth=0.8, linestyle="--", label=f"{target:.0%} target")
    ax.axvline(doc["overload_rate_scale"], color="grey", linewidth=0.8, label="overload point")
    ax.set_xlabel("load (trace rate scale)")
    ax.set_ylabel(f"SLO attainment (TTFT <= {doc['slo']['ttft_s']:g} s, TPOT <= {doc['slo']['tpot_s'] * 1000:g} ms)")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
