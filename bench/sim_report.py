"""Print the markdown result tables of bench/SIM.md from the committed JSON results.

.venv/bin/python bench/sim_report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def policy_table(doc: dict) -> str:
    base = next(r for r in doc["results"] if r["policy"] == "fcfs-rr")
    lines = [
        "| policy | mean s | p50 s | p99 s | mean TTFT s | p99 TTFT s | tok/s | load imbalance | mean / fcfs-rr | p99 / fcfs-rr |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = list(doc["results"]) + [
        {**v, "policy": f"{v['policy']} *(variant)*"} for v in doc.get("variants", [])
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['mean_latency_s']:.2f} | {r['p50_latency_s']:.2f} | {r['p99_latency_s']:.2f} | "
            f"{r['mean_ttft_s']:.2f} | {r['p99_ttft_s']:.2f} | {r['throughput_tok_s']:.0f} | {r['load_imbalance']:.3f} | "
            f"{r['mean_latency_s'] / base['mean_latency_s']:.2f} | {r['p99_latency_s'] / base['p99_latency_s']:.2f} |"
        )
    return "\n".join(lines)


def target_table(doc: dict) -> str:
    lines = ["| metric | target | measured | |", "| --- | --- | ---: | --- |"]
    for t in doc["targets"]:
        lines.append(
            f"| {t['metric']} | {t['target']} | {t['value']:.3f} | {'met' if t['met'] else '**missed**'} |"
        )
    return "\n".join(lines)


def main() -> int:
    for trace in ("conv", "code", "mooncake"):
        path = RESULTS / f"sim_{trace}.json"
        if not path.exists():
            print(f"<!-- {path.name} missing -->")
            continue
        doc = json.loads(path.read_text())
        print(
            f"### {trace}: load x{doc['rate_scale']:g}, {doc['instances']} instances, "
            f"fcfs-rr at {doc['fcfs_rr_x_unloaded']:.1f}x its unloaded mean ({doc['unloaded_mean_latency_s']:.2f} s)\n"
        )
        print(policy_table(doc) + "\n")
        print(target_table(doc) + "\n")
        d = doc["diagnostics"]
        print(
            "Diagnostics (slices / migrations per request, prefix-cache hit rate of prefill tokens, wall seconds): "
            + "; ".join(
                f"{k} {v['slices_per_request']:.2f}/{v['migrations_per_request']:.2f}/{v['prefix_hit_rate']:.2f}/{v['wall_s']:.1f}s"
                for k, v in d.items()
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
