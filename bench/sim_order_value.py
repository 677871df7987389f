"""What `llmfleet`'s learned order is worth in the simulator, against its own held queue in arrival
order and against the oracle (every length known), with two predictors: the one the simulator
uses for trace requests (each mapped to a held-out prompt at the same output-length quantile)
and the live dispatcher's ranker asked about each request's real prompt text
(`llmfleet.sim.live_predictions.PromptTextPredictor`).

The demo's workload (200 alpaca prompts with hidden real lengths on three windows of the conv
trace, 2 engines of 4 slots) on the CPU fleet's calibrated cost model (`llmfleet.demo.drift.CALIBRATION`)
at three engine speeds, at 3.0 and 4.2 requests/s. The live fleet's paired replays of the same
comparison are in bench/DATAPLANE.md section 4.

Reproduce (writes bench/results/sim_order_value.json):
    .venv/bin/python bench/sim_order_value.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim_guard import DEMO_FLEET, RESULTS, calibrated_cost, demo_trace, live_ranker  # noqa: E402  (this folder)

from llmfleet.core.config import SchedulingConfig  # noqa: E402
from llmfleet.core.prediction import PredictionInput  # noqa: E402
from llmfleet.demo.run import DEFAULT_RANKER_DIR, ensure_ranker, policy_config  # noqa: E402
from llmfleet.policies.registry import make_policy  # noqa: E402
from llmfleet.ranker.metrics import kendall_tau  # noqa: E402
from llmfleet.sim.live_predictions import ExactPredictor  # noqa: E402
from llmfleet.sim.metrics import summarize  # noqa: E402
from llmfleet.sim.runner import load_predictor  # noqa: E402
from llmfleet.sim.simulator import Simulator  # noqa: E402

# The held queue in arrival order: with a 1 ms time bound every request is past it at once, and
# the guard's oldest-first order is all that is left.
ORDERS = {"ranked (default)": {}, "held queue, arrival order": {"starvation_bound_seconds": 0.001}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--rates", default="3.0,4.2")
    ap.add_argument("--speeds", default="1.0,1.15,1.3", help="engine time factors (the machine's phases)")
    ap.add_argument("--windows", default="2000,3000,4000")
    ap.add_argument("--out", type=Path, default=RESULTS / "sim_order_value.json")
    args = ap.parse_args(argv)
    ranker = ensure_ranker(DEFAULT_RANKER_DIR)
    cost, cfg = calibrated_cost(), DEMO_FLEET
    ratios: dict[str, list[dict[str, float]]] = {}
    taus: dict[str, float] = {}
    for rate in [float(x) for x in args.rates.split(",")]:
        for w in [int(x) for x in args.windows.split(",")]:
            workload, trace = demo_trace(rate, w, ranker)
            predictors = {
                "simulator's predictor": load_predictor(str(ranker), trace, tau=0.6),
                "live ranker on the prompt text": live_ranker(workload, ranker),
            }
            items = [PredictionInput(t.request_id, t.prompt_tokens, true_output_tokens=t.output_tokens) for t in trace]
            for pname, predictor in predictors.items():
                scores = [e.score for e in predictor.predict(items)]  # type: ignore[attr-defined]
                taus[pname] = kendall_tau(scores, [t.output_tokens for t in trace])
            for speed in [float(x) for x in args.speeds.split(",")]:
                slowed = cost.slowed(speed)
                base = summarize(Simulator(trace, make_policy("fcfs-rr"), slowed, cfg).run())
                runs = [(f"{pname} | {order}", SchedulingConfig(policy="llmfleet", **guard), predictor)
                        for pname, predictor in predictors.items() for order, guard in ORDERS.items()]  # fmt: skip
                # The ceiling on any order: the live fleet's oracle, every length known.
                runs.append(("exact lengths | oracle (guard off)", policy_config("llmfleet-oracle"), ExactPredictor()))
                for label, config, predictor in runs:
                    s = summarize(Simulator(trace, make_policy(config), slowed, cfg, predictor=predictor).run())  # type: ignore[arg-type]
                    ratios.setdefault(f"{rate:g}/s | {label}", []).append({
                        "mean": s["mean_latency_s"] / base["mean_latency_s"],
                        "p99": s["p99_latency_s"] / base["p99_latency_s"],
                        "ttft": s["mean_ttft_s"] / base["mean_ttft_s"],
                    })  # fmt: skip
    summary = {k: {m: round(statistics.fmean(r[m] for r in rs), 3) for m in ("mean", "p99", "ttft")} | {"scenarios": len(rs)}
               for k, rs in ratios.items()}  # fmt: skip
    doc = {"kendall_tau_on_the_workload": {k: round(v, 3) for k, v in taus.items()}, "ratios_to_fcfs_rr": summary,
           "command": ".venv/bin/python bench/sim_order_value.py"}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    for name, tau in doc["kendall_tau_on_the_workload"].items():
        print(f"{name}: Kendall tau {tau}")
    for k, s in summary.items():
        print(f"{k:70s} mean {s['mean']:.3f}  p99 {s['p99']:.3f}  TTFT {s['ttft']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
