"""Print the markdown tables of bench/SIM.md from the committed capacity results.

    .venv/bin/python bench/capacity_report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REGIMES = ("conv", "mooncake", "memory")
# The targets; the goodput-over-fcfs-rr one is for the memory-bound regime only.
TARGETS: dict[str, tuple] = {
    "goodput llmfleet / best peer": (">=", 1.10),
    "goodput llmfleet / fcfs-rr": (">=", 1.25, "memory"),
    "overload: mean TTFT llmfleet / fcfs-rr": ("<=", 0.65),
    "overload: mean e2e llmfleet / best peer": ("<=", 0.85),
    "overload: p99 e2e llmfleet / fcfs-rr": ("<=", 1.10),
    "throughput llmfleet / fcfs-rr": (">=", 0.99),
    "share of the oracle's mean-latency gain": (">=", 0.70),
}


def policy_table(doc: dict) -> str:
    base = next(r for r in doc["results"] if r["policy"] == "fcfs-rr")["goodput_rate_scale"]
    lines = [
        "| policy | goodput (rate scale) | / fcfs-rr | SLO met at overload | mean TTFT s | mean s | p99 s | tok/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in doc["results"]:
        o = r["at_overload"]
        lines.append(
            f"| {r['policy']} | {r['goodput_rate_scale']:.3f} | {r['goodput_rate_scale'] / base:.2f} | "
            f"{o['slo_attainment']:.1%} | {o['mean_ttft_s']:.2f} | {o['mean_latency_s']:.2f} | "
            f"{o['p99_latency_s']:.2f} | {o['throughput_tok_s']:.0f} |"
        )
    return "\n".join(lines)


def targets_table(docs: dict[str, dict]) -> str:
    names = [t["metric"] for t in next(iter(docs.values()))["targets"]]
    lines = ["| metric | target | " + " | ".join(docs) + " |", "| --- | --- |" + " ---: |" * len(docs)]
    for name in names:
        goal = TARGETS.get(name)
        cells = []
        for regime, doc in docs.items():
            t = next(t for t in doc["targets"] if t["metric"] == name)
            v = t["value"]
            mark = ""
            if goal is not None and (len(goal) < 3 or goal[2] == regime):
                ok = v >= goal[1] if goal[0] == ">=" else v <= goal[1]
                mark = " met" if ok else " **missed**"
            cells.append(f"{v:.3f}{mark} (vs {t['against']})")
        target = (f"{goal[0]} {goal[1]}" + (f" ({goal[2]})" if len(goal) > 2 else "")) if goal else "(bound)"
        lines.append(f"| {name} | {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    docs = {}
    for regime in REGIMES:
        path = RESULTS / f"capacity_{regime}.json"
        if path.exists():
            docs[regime] = json.loads(path.read_text())
    if not docs:
        print("no capacity results; run bench/sim_capacity.py first", file=sys.stderr)
        return 1
    for regime, doc in docs.items():
        s = doc["slo"]
        print(
            f"### {regime}: overload point x{doc['overload_rate_scale']:g}; SLO TTFT <= {s['ttft_s']:g} s, "
            f"TPOT <= {s['tpot_s'] * 1000:g} ms, {s['attainment']:.0%} attainment\n"
        )
        print(policy_table(doc) + "\n")
    print("### Targets\n")
    print(targets_table(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
