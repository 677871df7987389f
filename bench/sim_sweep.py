"""Latency versus load (and latency CDFs) on Azure conv, the default policy's sensitivity to the
predictor's Kendall's tau, and its starvation bound's mean-versus-p99 trade-off.

    .venv/bin/python bench/sim_sweep.py

Runs `llmfleet sim sweep` for the continuous-batching policies over a ladder of loads
(bench/results/sim_sweep_conv/{sweep.json,latency_vs_load.png,latency_cdf.png}); then, at the
overload point of bench/results/capacity_conv.json (x2.625 by default), the default policy for
several tau (bench/results/sim_tau_conv.{json,png}) and for several starvation bounds
(bench/results/sim_guard_conv.{json,png}).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmfleet.cli import main as llmfleet_main  # noqa: E402
from llmfleet.policies.registry import make_policy  # noqa: E402
from llmfleet.sim.costmodel import fit_splitwise  # noqa: E402
from llmfleet.sim.metrics import summarize  # noqa: E402
from llmfleet.sim.runner import load_predictor  # noqa: E402
from llmfleet.sim.simulator import SimConfig, Simulator  # noqa: E402
from llmfleet.sim.traces import load_trace  # noqa: E402

SWEEP_POLICIES = "fcfs-rr,least-load,llm-d,dynamo,ltr,alise,oracle-srpt,llmfleet"


def tau_sensitivity(trace_name: str, scale: float, taus: list[float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost = fit_splitwise()
    trace = load_trace(trace_name, rate_scale=scale)
    cfg = SimConfig(instances=4)
    base = summarize(Simulator(trace, make_policy("fcfs-rr"), cost, cfg).run())
    rows = []
    for tau in taus:
        pred = load_predictor(None, trace, tau)
        s = summarize(Simulator(trace, make_policy("llmfleet"), cost, cfg, predictor=pred).run())
        rows.append(
            {
                "tau": tau,
                **s,
                "mean_vs_fcfs_rr": s["mean_latency_s"] / base["mean_latency_s"],
                "p99_vs_fcfs_rr": s["p99_latency_s"] / base["p99_latency_s"],
            }
        )
        print(
            f"tau {tau:4.2f}: llmfleet mean {s['mean_latency_s']:.2f} s ({rows[-1]['mean_vs_fcfs_rr']:.2f}x fcfs-rr), "
            f"p99 {s['p99_latency_s']:.2f} s ({rows[-1]['p99_vs_fcfs_rr']:.2f}x)"
        )
    doc = {
        "trace": trace_name,
        "rate_scale": scale,
        "instances": 4,
        "fcfs_rr": base,
        "llmfleet_by_tau": rows,
        "command": ".venv/bin/python bench/sim_sweep.py",
    }
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([r["tau"] for r in rows], [r["mean_vs_fcfs_rr"] for r in rows], marker="o", label="mean latency")
    ax.plot([r["tau"] for r in rows], [r["p99_vs_fcfs_rr"] for r in rows], marker="s", label="p99 latency")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("Kendall's tau of the length predictor")
    ax.set_ylabel("llmfleet / fcfs-rr")
    ax.set_title(f"{trace_name} x{scale:g}: value of better length predictions")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    plt.close(fig)


def guard_tradeoff(trace_name: str, scale: float, out: Path) -> None:
    """Mean versus p99 (and TTFT, SLO attainment) for the default policy as its starvation bound
    in seconds moves (the overtake guard off), against fcfs-rr and the best peer's mean at the
    same load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost = fit_splitwise()
    trace = load_trace(trace_name, rate_scale=scale)
    pred = load_predictor(None, trace, 0.6)
    cfg = SimConfig(instances=4)
    base = summarize(Simulator(trace, make_policy("fcfs-rr"), cost, cfg).run())
    peers = {n: summarize(Simulator(trace, make_policy(n), cost, cfg).run()) for n in ("least-load", "llm-d", "dynamo")}
    best_peer = min([base, *peers.values()], key=lambda s: s["mean_latency_s"])
    rows = []
    for bound in (10, 15, 20, 30, 45, 60, 120, 86400):
        # The bound in seconds alone: the overtake guard (bench/sim_guard.py) is off for this dial.
        policy = make_policy("llmfleet", starvation_bound_seconds=bound, starvation_overtake_turns=None)
        s = summarize(Simulator(trace, policy, cost, cfg, predictor=pred).run())
        rows.append(
            {
                "starvation_bound_seconds": bound,
                "mean_vs_fcfs_rr": s["mean_latency_s"] / base["mean_latency_s"],
                "mean_vs_best_peer": s["mean_latency_s"] / best_peer["mean_latency_s"],
                "p99_vs_fcfs_rr": s["p99_latency_s"] / base["p99_latency_s"],
                "ttft_vs_fcfs_rr": s["mean_ttft_s"] / base["mean_ttft_s"],
                **s,
            }
        )
        r = rows[-1]
        print(
            f"bound {bound:g} s: mean {r['mean_vs_fcfs_rr']:.3f}x fcfs-rr, {r['mean_vs_best_peer']:.3f}x best peer; "
            f"p99 {r['p99_vs_fcfs_rr']:.3f}x; TTFT {r['ttft_vs_fcfs_rr']:.3f}x; SLO {s['slo_attainment']:.3f}",
            flush=True,
        )
    doc = {
        "trace": trace_name,
        "rate_scale": scale,
        "fcfs_rr": base,
        "peers": peers,
        "best_peer": best_peer["policy"],
        "rows": rows,
        "command": ".venv/bin/python bench/sim_sweep.py",
    }
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot([r["mean_vs_best_peer"] for r in rows], [r["p99_vs_fcfs_rr"] for r in rows], marker="o")
    for r in rows:
        b = r["starvation_bound_seconds"]
        ax.annotate(f"{b:g} s" if b < 86400 else "off", (r["mean_vs_best_peer"], r["p99_vs_fcfs_rr"]), fontsize=7)
    ax.axhline(1.10, color="red", lw=0.8, ls="--", label="p99 / fcfs-rr target (1.10)")
    ax.axvline(0.85, color="red", lw=0.8, ls=":", label="mean / best peer target (0.85)")
    ax.set_xlabel(f"mean latency / best peer ({best_peer['policy']})")
    ax.set_ylabel("p99 latency / fcfs-rr")
    ax.set_title(f"{trace_name} x{scale:g}: llmfleet's starvation bound, mean against tail")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    ap.add_argument("--trace", default="conv")
    ap.add_argument("--rate-scales", default="1,2,2.4,2.625,2.8")
    ap.add_argument("--tau-scale", type=float, default=2.625, help="the conv overload point (capacity_conv.json)")
    ap.add_argument("--taus", default="0,0.3,0.5,0.6,0.7,0.8,0.9,1.0")
    args = ap.parse_args()
    results = ROOT / "bench" / "results"
    rc = llmfleet_main(
        [
            "sim",
            "sweep",
            "--trace",
            args.trace,
            "--policies",
            SWEEP_POLICIES,
            "--instances",
            "4",
            "--rate-scales",
            args.rate_scales,
            "--out-dir",
            str(results / f"sim_sweep_{args.trace}"),
            "--no-progress",
        ]
    )
    if rc:
        return rc
    tau_sensitivity(
        args.trace,
        args.tau_scale,
        [float(t) for t in args.taus.split(",")],
        results / f"sim_tau_{args.trace}",
    )
    guard_tradeoff(args.trace, args.tau_scale, results / f"sim_guard_{args.trace}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
