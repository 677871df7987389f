"""Does re-estimating at slice boundaries pay off end to end? The simulator, conv at the
scheduling benchmark's overload point (bench/results/capacity_conv.json), `llmfleet` with and
without re-estimates, side by side on the same arrivals and engines.

The length predictor is the noise stand-in with the learned ranker's measured quality: its tau
at admission and its remaining-length tau after k generated tokens, read from an
`llmfleet ranker eval --generated-tokens` JSON (the simulator has no answer text to run the
real model on). Several noise seeds give a confidence interval on the ratio.

    .venv/bin/python bench/sim_reestimate.py --eval bench/results/ranker_remaining_eval.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmfleet.core.config import SchedulingConfig  # noqa: E402
from llmfleet.core.noise_predictor import NoisyOraclePredictor  # noqa: E402
from llmfleet.sim.costmodel import load_cost_model  # noqa: E402
from llmfleet.sim.instance import EngineConfig  # noqa: E402
from llmfleet.sim.metrics import Slo  # noqa: E402
from llmfleet.sim.runner import run_policies  # noqa: E402
from llmfleet.sim.simulator import SimConfig  # noqa: E402
from llmfleet.sim.traces import load_trace  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--eval", required=True, help="ranker eval JSON with remaining_tau")
    ap.add_argument("--seeds", type=int, default=5, help="noise seeds (default 5)")
    ap.add_argument("--rate-scale", type=float, default=None, help="default: conv's overload point from capacity_conv.json")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--slice-tokens", type=int, default=128,
                    help="slice length for the runs that re-estimate (default 128; the default llmfleet runs requests "
                         "to completion, which leaves no boundary to re-estimate at)")  # fmt: skip
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sim_reestimate.json"))
    args = ap.parse_args()
    scale = args.rate_scale or json.loads((ROOT / "bench/results/capacity_conv.json").read_text())["overload_rate_scale"]
    trace = load_trace("conv", rate_scale=scale, limit=args.limit)
    cost = load_cost_model("llama2-70b-tp8-h100")
    cfg = SimConfig(instances=4, engine=EngineConfig(max_running=64))
    slo = Slo(ttft_s=2.0, tpot_s=0.1)
    default = SchedulingConfig(policy="llmfleet")  # as shipped: no slices
    sliced = SchedulingConfig(policy="llmfleet", slice_tokens=args.slice_tokens)
    rows = []
    t0 = time.time()
    for seed in range(args.seeds):
        with_re = NoisyOraclePredictor.from_eval(args.eval, (t.output_tokens for t in trace), seed=seed)
        without = replace(with_re, tau_curve=())
        row = {"seed": seed}
        perfect = replace(with_re, tau=1.0, tau_curve=())
        runs = (("default", default, without), ("once", sliced, without), ("reestimated", sliced, with_re),
                # The ceiling: what any estimator could give this policy (exact lengths from the start).
                ("default, exact lengths", default, perfect), (f"S={args.slice_tokens}, exact lengths", sliced, perfect))  # fmt: skip
        for label, config, predictor in runs:
            (run,) = run_policies(trace, [config], cost, cfg, predictor, slo=slo, labels=[label])
            row[label] = {k: run.summary[k] for k in ("mean_latency_s", "p99_latency_s", "mean_ttft_s", "throughput_tok_s",
                                                        "slo_attainment")}  # fmt: skip
        row["mean_latency_ratio"] = row["reestimated"]["mean_latency_s"] / row["once"]["mean_latency_s"]
        row["mean_latency_ratio_vs_default"] = row["reestimated"]["mean_latency_s"] / row["default"]["mean_latency_s"]
        row["ceiling_ratio"] = min(row["default, exact lengths"]["mean_latency_s"],
                                   row[f"S={args.slice_tokens}, exact lengths"]["mean_latency_s"]) / row["default"]["mean_latency_s"]  # fmt: skip
        rows.append(row)
        print(f"seed {seed}: mean e2e default {row['default']['mean_latency_s']:.2f}, S={args.slice_tokens} once "
              f"{row['once']['mean_latency_s']:.2f}, re-estimated {row['reestimated']['mean_latency_s']:.2f} s; SLO "
              + " / ".join(f"{row[k]['slo_attainment']:.3f}" for k in ("default", "once", "reestimated")), flush=True)  # fmt: skip

    def ci(key: str) -> dict:
        values = [r[key] for r in rows]
        mean = statistics.fmean(values)
        half = 1.96 * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
        return {"mean": mean, "ci95": [mean - half, mean + half]}

    vs_once, vs_default, ceiling = ci("mean_latency_ratio"), ci("mean_latency_ratio_vs_default"), ci("ceiling_ratio")
    mean, (lo, hi) = vs_once["mean"], vs_once["ci95"]
    doc = {
        "trace": "conv", "rate_scale": scale, "instances": 4, "policy": "llmfleet", "eval": args.eval,
        "tau_admission": with_re.tau, "tau_curve": [list(p) for p in with_re.tau_curve], "runs": rows,
        "slice_tokens": args.slice_tokens, "mean_latency_ratio": vs_once, "mean_latency_ratio_vs_default": vs_default,
        "ceiling_exact_lengths_vs_default": ceiling,
        "target": 0.92,
        "wall_s": round(time.time() - t0, 1),
        "command": "python bench/sim_reestimate.py " + " ".join(sys.argv[1:]),
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"mean latency, re-estimated / once: {mean:.3f} (95% CI {lo:.3f} to {hi:.3f}); target <= 0.92")
    print(f"mean latency, re-estimated / shipped default (no slices): {vs_default['mean']:.3f} "
          f"(95% CI {vs_default['ci95'][0]:.3f} to {vs_default['ci95'][1]:.3f})")  # fmt: skip
    print(f"ceiling: exact lengths / shipped default: {ceiling['mean']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
