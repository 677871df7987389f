"""How far can any order go on the demo's fleet? The ceiling of the mean and TTFT targets in the
simulator, with every length known, at the p99 target.

The demo's workload (200 alpaca prompts with real answer lengths on three windows of the conv
trace, 2 engines of 4 slots, the CPU fleet's calibrated cost model at three engine speeds; the
same scenarios as bench/sim_guard.py) under `llmfleet` with:

* **whole requests, the guard swept**: the starvation bound (10 or 30 s) crossed with the
  overtake bound (0.5-8 turns, or none) and its queue fraction (0.25-0.75, or none), each with
  exact lengths (the ceiling of any length ranker) and with the live ranker on the prompt text.
  The guard is the mean-versus-tail dial: with it off, exact lengths give the oracle's mean and
  a p99 far past the target; the lowest mean whose p99 meets the target is the ceiling of the
  two targets together.
* **preemptive slices** (S tokens, then the request is re-ranked and may wait for a shorter
  one): `oracle-srpt` (true remaining lengths, sticky to its pod), `llmfleet` with exact
  lengths, and `llmfleet` with the live ranker re-estimating at each boundary through the noise
  model at the remaining-length tau its artifact measured (`ReestimatedBy`; the simulator has
  no generated text to run the remaining-length model on), and without re-estimates.

Every ratio is to `fcfs-rr` on the same scenario (and to `least-load` for that target),
averaged over the scenarios of a rate.

Reproduce (writes bench/results/sim_ceiling.{json,png}, about 6 minutes):
    .venv/bin/python bench/sim_ceiling.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim_guard import DEMO_FLEET, RESULTS, calibrated_cost, demo_trace, live_ranker  # noqa: E402  (this folder)

from llmfleet.core.config import SchedulingConfig  # noqa: E402
from llmfleet.core.noise_predictor import NoisyOraclePredictor  # noqa: E402
from llmfleet.core.scheduling import Decision, SchedulerView  # noqa: E402
from llmfleet.demo.run import DEFAULT_RANKER_DIR, ensure_ranker  # noqa: E402
from llmfleet.policies.base import dispatch_ranked  # noqa: E402
from llmfleet.policies.llmfleet_default import LLMFleetDefault  # noqa: E402
from llmfleet.policies.registry import make_policy  # noqa: E402
from llmfleet.ranker import load_predictor as load_ranker  # noqa: E402
from llmfleet.sim.live_predictions import ExactPredictor  # noqa: E402
from llmfleet.sim.metrics import summarize  # noqa: E402
from llmfleet.sim.runner import ReestimatedBy  # noqa: E402
from llmfleet.sim.simulator import Simulator  # noqa: E402


class Aging(LLMFleetDefault):
    """Another tail guard, for comparison only: shortest remaining first, less `alpha` tokens for
    every second waited (a request's rank improves steadily instead of jumping ahead at a bound)."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.name = f"llmfleet, aging {alpha:g} tokens/s"

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        return dispatch_ranked(view, lambda r: (self.remaining(r) - self.alpha * (view.now - r.arrival_s), r.seq), self.profile)


P99_TARGET, MEAN_TARGET, TTFT_TARGET, LEAST_LOAD_TARGET = 1.10, 0.85, 0.70, 0.90
DEFAULT_GUARD = (30.0, 1.0, 0.5)  # the shipped starvationBoundSeconds, OvertakeTurns, OvertakeQueueFraction
GUARD_OFF = {"starvation_bound_seconds": 86400.0, "starvation_overtake_turns": None, "starvation_overtake_queue_fraction": None}


def guard(bound: float, turns: float | None, fraction: float | None) -> dict:
    return {"starvation_bound_seconds": bound, "starvation_overtake_turns": turns,
            "starvation_overtake_queue_fraction": fraction}  # fmt: skip


def guards() -> dict[str, dict]:
    """Every guard setting swept: a queue fraction only means something with an overtake bound."""
    out = {"guard off": GUARD_OFF}
    for bound, turns, fraction in itertools.product((10.0, 30.0), (0.5, 1.0, 2.0, 4.0, 8.0, None), (0.25, 0.5, 0.75, None)):
        if turns is None and fraction is not None:
            continue
        name = f"{bound:g} s, {'no overtake bound' if turns is None else f'{turns:g} turns'}" + (
            f" or {fraction:g} queue" if fraction is not None else "")  # fmt: skip
        out[name + (" (default)" if (bound, turns, fraction) == DEFAULT_GUARD else "")] = guard(bound, turns, fraction)
    return out


AGING = (5.0, 10.0, 20.0, 40.0, 80.0)  # tokens per second waited


def variants(slices: list[int]) -> list[tuple[str, str, SchedulingConfig | float]]:
    """(predictor, label, config, or an aging rate for `Aging`)."""
    out: list[tuple[str, str, SchedulingConfig | float]] = []
    for name, g in guards().items():
        out += [("exact", f"whole, exact lengths | {name}", SchedulingConfig(policy="llmfleet", **g)),
                ("live", f"whole, live ranker | {name}", SchedulingConfig(policy="llmfleet", **g))]  # fmt: skip
    for alpha in AGING:
        out += [("exact", f"aging, exact lengths | {alpha:g} tokens/s", alpha), ("live", f"aging, live ranker | {alpha:g} tokens/s", alpha)]
    for s in slices:
        out += [
            ("none", f"S={s}, oracle-srpt", SchedulingConfig(policy="oracle-srpt", slice_tokens=s)),
            ("exact", f"S={s}, exact lengths | guard off", SchedulingConfig(policy="llmfleet", slice_tokens=s, **GUARD_OFF)),
            ("exact", f"S={s}, exact lengths | default guard", SchedulingConfig(policy="llmfleet", slice_tokens=s)),
            ("reestimated", f"S={s}, live ranker re-estimating | default guard", SchedulingConfig(policy="llmfleet", slice_tokens=s)),
            ("reestimated", f"S={s}, live ranker re-estimating | guard off",
             SchedulingConfig(policy="llmfleet", slice_tokens=s, **GUARD_OFF)),
            ("live", f"S={s}, live ranker, no re-estimates | default guard", SchedulingConfig(policy="llmfleet", slice_tokens=s)),
        ]  # fmt: skip
    return out


def scenario(rate: float, window: int, speed: float, ranker: Path, runs: list[tuple[str, str, SchedulingConfig | float]]) -> dict:
    workload, trace = demo_trace(rate, window, ranker)
    cost = calibrated_cost().slowed(speed)
    live = live_ranker(workload, ranker)
    # The artifact's own remaining-length tau per k (measured on its held-back prompts). The
    # noise model answers only the re-estimates (k > 0): admission is the live ranker's.
    curve = load_ranker(str(ranker)).ranker.remaining.tau_curve
    later = NoisyOraclePredictor.fitted([t.output_tokens for t in trace], tau=curve[0][1], tau_curve=curve)
    predictors = {"none": None, "exact": ExactPredictor(), "live": live, "reestimated": ReestimatedBy(live, later)}
    base = {p: summarize(Simulator(trace, make_policy(p), cost, DEMO_FLEET).run()) for p in ("fcfs-rr", "least-load")}
    out = {"window": window, "engine_time_factor": speed,
           "fcfs_rr_queue_share": base["fcfs-rr"]["mean_ttft_s"] / base["fcfs-rr"]["mean_latency_s"], "ratios": {}}  # fmt: skip
    for family, label, config in runs:
        policy = Aging(config) if isinstance(config, float) else make_policy(config)
        s = summarize(Simulator(trace, policy, cost, DEMO_FLEET, predictor=predictors[family]).run())  # type: ignore[arg-type]
        out["ratios"][label] = {k: round(v, 4) for k, v in {
            "mean": s["mean_latency_s"] / base["fcfs-rr"]["mean_latency_s"],
            "ttft": s["mean_ttft_s"] / base["fcfs-rr"]["mean_ttft_s"],
            "p99": s["p99_latency_s"] / base["fcfs-rr"]["p99_latency_s"],
            "throughput": s["throughput_tok_s"] / base["fcfs-rr"]["throughput_tok_s"],
            "mean_vs_least_load": s["mean_latency_s"] / base["least-load"]["mean_latency_s"],
        }.items()}  # fmt: skip
    return out


def summary(scenarios: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for label in scenarios[0]["ratios"]:
        rs = [s["ratios"][label] for s in scenarios]
        out[label] = {k: round(statistics.fmean(r[k] for r in rs), 4) for k in rs[0]} | {
            "p99_max": round(max(r["p99"] for r in rs), 4), "p99_met": sum(r["p99"] <= P99_TARGET for r in rs),
            "scenarios": len(rs)}  # fmt: skip
    return out


# The families a frontier is drawn over: each sweeps its tail guard (or slice length).
FAMILIES: dict[str, Callable[[str], bool]] = {
    "whole, exact lengths": lambda label: label.startswith("whole, exact lengths"),
    "aging, exact lengths": lambda label: label.startswith("aging, exact lengths"),
    "slices, exact lengths": lambda label: label.startswith("S=") and ("exact" in label or "oracle-srpt" in label),
    "whole, live ranker": lambda label: label.startswith("whole, live ranker"),
    "aging, live ranker": lambda label: label.startswith("aging, live ranker"),
    "slices, live ranker": lambda label: label.startswith("S=") and "live ranker" in label,
}
METRICS = ("mean", "ttft", "mean_vs_least_load")


def frontier(summ: dict[str, dict[str, float]], family: str, metric: str) -> dict | None:
    """The variant of a family with the lowest average `metric` whose average p99 meets the target."""
    ok = [(s[metric], label) for label, s in summ.items() if FAMILIES[family](label) and s["p99"] <= P99_TARGET]
    if not ok:
        return None
    value, label = min(ok)
    return {"variant": label, metric: value, "p99": summ[label]["p99"]}


def meets_all(summ: dict[str, dict[str, float]]) -> list[str]:
    """The variants whose averages meet the mean, TTFT and p99 targets together."""
    return [label for label, s in summ.items()
            if s["mean"] <= MEAN_TARGET and s["ttft"] <= TTFT_TARGET and s["p99"] <= P99_TARGET]  # fmt: skip


def plot(doc: dict, path: Path) -> None:
    """Per target, the best each family reaches at the p99 target, against fcfs-rr's queue share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = list(doc["rates"])
    shares = [doc["rates"][r]["fcfs_rr_queue_share"] for r in rates]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    colors = dict(zip(FAMILIES, ("tab:green", "olive", "tab:red", "tab:blue", "tab:cyan", "tab:orange"), strict=True))
    for ax, metric in zip(axes, METRICS, strict=True):
        for family, color in colors.items():
            pts = [(x, b[metric]) for x, r in zip(shares, rates, strict=True)
                   if (b := doc["rates"][r]["best_at_p99_target"][f"{family} | {metric}"]) is not None]  # fmt: skip
            ls = "-" if "exact" in family else "--"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, marker="o", color=color, label=f"{family}, best guard")
        for label, style in (("whole, live ranker | 30 s, 1 turns or 0.5 queue (default)", "k-s"),
                             ("whole, exact lengths | guard off", "k:^")):  # fmt: skip
            ys = [doc["rates"][r]["summary"][label][metric] for r in rates]
            ax.plot(shares, ys, style, ms=5, lw=1, label=label.replace("whole, ", "").replace(" | ", ", ")
                    + (" (p99 past target)" if "guard off" in label else ""))  # fmt: skip
        ax.axhline(doc["targets"][metric], color="red", lw=1, ls="--", label=f"target {doc['targets'][metric]}")
        ax.set_xlabel("fcfs-rr's queue share of its latency (rates " + ", ".join(rates) + ")")
        ax.set_ylabel(f"{metric.replace('_', ' ')} / {'least-load' if 'least' in metric else 'fcfs-rr'}")
        ax.set_title(f"{metric.replace('_', ' ')}: best with average p99 <= {P99_TARGET} of fcfs-rr's", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6.5)
    fig.suptitle("The demo's fleet in the simulator (2 engines x 4 slots, 200 alpaca prompts, 3 windows x 3 engine speeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--rates", default="3.0,3.6,4.2,4.8,5.4",
                    help="request rates: fcfs-rr queues for about 0.25-0.8 of its latency (default 3.0,3.6,4.2,4.8,5.4)")
    ap.add_argument("--speeds", default="1.0,1.15,1.3", help="engine time factors (the machine's phases)")
    ap.add_argument("--windows", default="2000,3000,4000", help="trace windows")
    ap.add_argument("--slices", default="32,64,128,256", help="slice lengths for the preemptive runs")
    ap.add_argument("--ranker", type=Path, default=DEFAULT_RANKER_DIR, help="trained on first use if missing")
    ap.add_argument("--out", type=Path, default=RESULTS / "sim_ceiling.json")
    args = ap.parse_args(argv)
    ranker = ensure_ranker(args.ranker)
    runs = variants([int(x) for x in args.slices.split(",")])
    doc: dict = {"targets": {"mean": MEAN_TARGET, "ttft": TTFT_TARGET, "p99": P99_TARGET, "mean_vs_least_load": LEAST_LOAD_TARGET},
                 "rates": {}}  # fmt: skip
    for rate in [float(x) for x in args.rates.split(",")]:
        scenarios = [scenario(rate, w, speed, ranker, runs) for w in [int(x) for x in args.windows.split(",")]
                     for speed in [float(x) for x in args.speeds.split(",")]]  # fmt: skip
        summ = summary(scenarios)
        best = {f"{family} | {metric}": frontier(summ, family, metric) for family in FAMILIES for metric in METRICS}
        # Each scenario keeps only the rows the summary quotes (the full sweep is in `summary`).
        quoted = {b["variant"] for b in best.values() if b} | {label for label in summ if "default" in label or "guard off" in label}
        for sc in scenarios:
            sc["ratios"] = {label: r for label, r in sc["ratios"].items() if label in quoted}
        share = statistics.fmean(s["fcfs_rr_queue_share"] for s in scenarios)
        doc["rates"][f"{rate:g}/s"] = {"fcfs_rr_queue_share": share, "best_at_p99_target": best, "meets_all_three": meets_all(summ),
                                      "summary": summ, "scenarios": scenarios}  # fmt: skip
        print(f"\n{rate:g}/s (fcfs-rr queued {share:.0%} of its latency); lowest with average p99 <= {P99_TARGET}:")
        for key, b in best.items():
            print(f"  {key:46s} " + ("none" if b is None else f"{b[key.split(' | ')[1]]:.3f} (p99 {b['p99']:.3f}): {b['variant']}"))
        print(f"  meeting mean <= {MEAN_TARGET}, TTFT <= {TTFT_TARGET} and p99 <= {P99_TARGET} together: "
              + (", ".join(meets_all(summ)) or "none"))
        for label, s in summ.items():
            if "default" in label or "guard off" in label or "oracle-srpt" in label:
                print(f"  {label:62s} mean {s['mean']:.3f} TTFT {s['ttft']:.3f} p99 {s['p99']:.3f} "
                      f"throughput {s['throughput']:.3f} vs least-load {s['mean_vs_least_load']:.3f}")  # fmt: skip
    doc["command"] = ".venv/bin/python bench/sim_ceiling.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
