"""Simulator speed: simulated requests per wall-clock minute (target >= 50,000 on 2 cores).

    .venv/bin/python bench/sim_speed.py

Replays the full Azure conv trace (19,366 requests, 4 instances) at the benchmark load and at
the native rate, under the baseline and the default policy, and writes
bench/results/sim_speed.json. The machine is shared, so each case is the best of `--repeats`,
and the CPU seconds of the process are recorded beside the wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmfleet.policies.registry import make_policy  # noqa: E402
from llmfleet.sim.costmodel import fit_splitwise  # noqa: E402
from llmfleet.sim.runner import load_predictor  # noqa: E402
from llmfleet.sim.simulator import SimConfig, Simulator  # noqa: E402
from llmfleet.sim.traces import load_trace  # noqa: E402

TARGET_PER_MIN = 50_000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--trace", default="conv")
    ap.add_argument("--policies", default="fcfs-rr,least-load,llmfleet")
    ap.add_argument("--rate-scales", default="1,2.75")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sim_speed.json"))
    args = ap.parse_args()
    cost = fit_splitwise()
    rows = []
    for scale in [float(s) for s in args.rate_scales.split(",")]:
        trace = load_trace(args.trace, rate_scale=scale)
        pred = load_predictor(None, trace, 0.6)
        for name in args.policies.split(","):
            best = cpu = None
            for _ in range(args.repeats):
                c0 = time.process_time()
                res = Simulator(trace, make_policy(name), cost, SimConfig(instances=4), predictor=pred).run()
                c1 = time.process_time() - c0
                best = res.wall_s if best is None else min(best, res.wall_s)
                cpu = c1 if cpu is None else min(cpu, c1)
            assert best is not None and cpu is not None
            per_min = len(trace) / best * 60
            rows.append(
                {
                    "policy": name,
                    "rate_scale": scale,
                    "requests": len(trace),
                    "wall_s": round(best, 3),
                    "cpu_s": round(cpu, 3),
                    "sim_requests_per_wall_min": round(per_min),
                    "sim_requests_per_cpu_min": round(len(trace) / cpu * 60),
                    "meets_target": per_min >= TARGET_PER_MIN,
                }
            )
            print(
                f"{name:12s} x{scale:<5g} {len(trace)} requests in {best:6.2f} s wall ({cpu:6.2f} s CPU) -> "
                f"{per_min:10,.0f} per wall minute"
            )
    doc = {
        "target_per_wall_min": TARGET_PER_MIN,
        "trace": args.trace,
        "instances": 4,
        "rows": rows,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "command": ".venv/bin/python bench/sim_speed.py",
    }
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["meets_target"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
