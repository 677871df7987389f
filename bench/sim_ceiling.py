"""What any scheduler can gain over `fcfs-rr` on the demo's workload, and what the relay costs.

The live e2e runs (bench/DATAPLANE.md, section 3) met their targets exactly where `fcfs-rr`
queued, and lost where it did not. This asks the simulator, which knows the true lengths, two
questions on the same workload (200 alpaca prompts at 3.0/s on three windows of the conv trace,
2 engines x 4 slots, the CPU fleet's calibrated cost model from sim_fidelity.json):

* **The ceiling.** How much better than `fcfs-rr` can any order be, as the engines' speed moves
  the fleet from no queue to a queue (the engine time factors: the machine's phases)? The bound
  is `oracle-srpt` (true remaining lengths, preemptive at slice boundaries; slices of 512, since
  on these engines a short slice's re-prefill costs more than the order gains) and `llmfleet`
  given the true lengths (`tau=1`).
* **The relay.** The calibrated model's data-plane terms come from a lightly loaded fleet
  (dispatch 0.09 s, end notice 0). Under the e2e load the same relay measured 0.3-0.5 s
  (DATAPLANE section 7), all of it waiting for the CPU. With the relay set to 0.3 s of dispatch
  and 0.1 s of end notice, how much does holding the queue in the dispatcher
  (`engineLookahead: 0`) cost, and does a lookahead of 1 or 2 per engine win it back?

Reproduce (writes bench/results/sim_ceiling.{json,png}; about a minute):
    .venv/bin/python bench/sim_ceiling.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmfleet.core.config import SchedulingConfig  # noqa: E402
from llmfleet.core.noise_predictor import NoisyOraclePredictor  # noqa: E402
from llmfleet.demo.run import DEFAULT_RANKER_DIR, ensure_ranker  # noqa: E402
from llmfleet.demo.workload import WorkloadSpec, build_workload  # noqa: E402
from llmfleet.policies.registry import make_policy  # noqa: E402
from llmfleet.sim.costmodel import CostModel  # noqa: E402
from llmfleet.sim.instance import EngineConfig  # noqa: E402
from llmfleet.sim.metrics import summarize  # noqa: E402
from llmfleet.sim.runner import load_predictor  # noqa: E402
from llmfleet.sim.simulator import SimConfig, Simulator  # noqa: E402
from llmfleet.sim.traces import TraceRequest  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# (label, scheduling settings, which predictor: "ranker", "exact" or None)
CEILING: list[tuple[str, dict, str | None]] = [
    ("least-load", {"policy": "least-load"}, None),
    ("llmfleet", {"policy": "llmfleet"}, "ranker"),
    ("llmfleet, true lengths", {"policy": "llmfleet"}, "exact"),
    ("oracle-srpt (S=512)", {"policy": "oracle-srpt", "slice_tokens": 512}, None),
]
RELAY: list[tuple[str, dict, str | None]] = [
    ("least-load", {"policy": "least-load"}, None),
    ("llmfleet, holding", {"policy": "llmfleet", "engine_lookahead": 0}, "ranker"),
    ("llmfleet, lookahead 1", {"policy": "llmfleet", "engine_lookahead": 1}, "ranker"),
    ("llmfleet, lookahead 2", {"policy": "llmfleet", "engine_lookahead": 2}, "ranker"),
]
LOADED_RELAY = {"dispatch_delay_s": 0.3, "end_notice_s": 0.1}


def run(trace: list[TraceRequest], cost: CostModel, variants, predictors: dict) -> dict[str, dict]:
    cfg = SimConfig(instances=2, engine=EngineConfig(max_running=4, token_budget=2048))
    out = {"fcfs-rr": summarize(Simulator(trace, make_policy("fcfs-rr"), cost, cfg).run())}
    for label, settings, pred in variants:
        policy = make_policy(SchedulingConfig(**settings))
        out[label] = summarize(Simulator(trace, policy, cost, cfg, predictor=predictors.get(pred)).run())  # type: ignore[arg-type]
    return out


def ratios(s: dict[str, dict]) -> dict[str, dict[str, float]]:
    b = s["fcfs-rr"]
    return {
        n: {
            "mean": x["mean_latency_s"] / b["mean_latency_s"],
            "ttft": x["mean_ttft_s"] / b["mean_ttft_s"],
            "p99": x["p99_latency_s"] / b["p99_latency_s"],
            "throughput": x["throughput_tok_s"] / b["throughput_tok_s"],
            "mean_vs_least_load": x["mean_latency_s"] / s["least-load"]["mean_latency_s"],
        }
        for n, x in s.items()
        if n != "fcfs-rr"
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--speeds", default="0.7,0.8,0.9,1.0,1.15", help="engine time factors (1: as calibrated)")
    ap.add_argument("--windows", default="2000,3000,4000", help="first trace request of each window")
    ap.add_argument("--ranker", type=Path, default=DEFAULT_RANKER_DIR, help="trained on first use if missing")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    ranker = ensure_ranker(args.ranker)
    fidelity = json.loads((RESULTS / "sim_fidelity.json").read_text())
    base = CostModel.from_dict(fidelity["cost_model"]["calibrated"])
    scenarios = []
    for w in [int(x) for x in args.windows.split(",")]:
        workload = build_workload(WorkloadSpec(count=200, rate=3.0, start_index=w, prompt_pool=str(ranker / "holdout_pool.jsonl")))
        # About 4 characters per token: what the engines' tokenizer makes of these prompts.
        trace = [TraceRequest(r.request_id, r.arrival_s, max(8, len(r.prompt_text or "") // 4), r.output_tokens) for r in workload]
        predictors = {
            "ranker": load_predictor(str(ranker), trace, tau=0.6),
            "exact": NoisyOraclePredictor.fitted([t.output_tokens for t in trace], tau=1.0),
        }
        for speed in [float(x) for x in args.speeds.split(",")]:
            cost = base.slowed(speed)
            ceiling = run(trace, cost, CEILING, predictors)
            relay = run(trace, dataclasses.replace(cost, **LOADED_RELAY), RELAY, predictors)
            scenarios.append({
                "window": w, "engine_time_factor": speed,
                "fcfs_rr_ttft_s": ceiling["fcfs-rr"]["mean_ttft_s"],
                "ceiling": {"summaries": ceiling, "ratios": ratios(ceiling)},
                "loaded_relay": {"summaries": relay, "ratios": ratios(relay)},
            })  # fmt: skip
            print(f"window {w} x{speed:g} (fcfs-rr TTFT {ceiling['fcfs-rr']['mean_ttft_s']:.2f} s): "
                  + "; ".join(f"{n} {r['mean']:.2f}" for part in ("ceiling", "loaded_relay")
                              for n, r in scenarios[-1][part]["ratios"].items()), flush=True)  # fmt: skip
    doc = {
        "about": "demo workload: 200 requests at 3.0/s, 2 engines x 4 slots, the CPU fleet's calibrated model",
        "loaded_relay": LOADED_RELAY,
        "summary": summary(scenarios),
        "scenarios": scenarios,
        "command": ".venv/bin/python bench/sim_ceiling.py " + " ".join(argv or sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sim_ceiling.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(scenarios, args.out / "sim_ceiling.png")
    print(json.dumps(doc["summary"], indent=2))
    return 0


def summary(scenarios: list[dict]) -> dict[str, dict]:
    """Per part and variant, the average ratios where fcfs-rr barely queued (TTFT < 1 s) and where it queued."""
    out: dict[str, dict] = {}
    for part in ("ceiling", "loaded_relay"):
        for regime, keep in (("fcfs-rr TTFT < 1 s", lambda s: s["fcfs_rr_ttft_s"] < 1.0),
                             ("fcfs-rr TTFT >= 1 s", lambda s: s["fcfs_rr_ttft_s"] >= 1.0)):  # fmt: skip
            chosen = [s for s in scenarios if keep(s)]
            if not chosen:
                continue
            names = list(chosen[0][part]["ratios"])
            out.setdefault(part, {})[regime] = {
                n: {k: round(statistics.fmean(s[part]["ratios"][n][k] for s in chosen), 3)
                    for k in ("mean", "ttft", "p99", "throughput", "mean_vs_least_load")} | {"scenarios": len(chosen)}
                for n in names
            }  # fmt: skip
    return out


def plot(scenarios: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for ax, part, title in zip(axes, ("ceiling", "loaded_relay"),
                               ("order: what each gains (calibrated relay)", "relay at its loaded cost (0.3 s + 0.1 s)"), strict=True):  # fmt: skip
        for name in scenarios[0][part]["ratios"]:
            pts = sorted((s["fcfs_rr_ttft_s"], s[part]["ratios"][name]["mean"]) for s in scenarios)
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, lw=1, label=name)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axhline(0.85, color="red", lw=0.8, ls="--", label="target (0.85)")
        ax.set_xlabel("fcfs-rr mean TTFT, s (how much it queued)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("mean latency / fcfs-rr")
    fig.suptitle("Demo workload in the simulator, 3 windows x 5 engine speeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
