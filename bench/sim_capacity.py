"""Goodput of every policy in three regimes, side by side, on whole traces (issue: scheduling
that wins). For each regime it runs `llmfleet sim capacity` (one `CapacityStudy`), writes
bench/results/capacity_<regime>.json and .png, and prints the targets table.

    .venv/bin/python bench/sim_capacity.py                     # all three regimes
    .venv/bin/python bench/sim_capacity.py --regime conv       # one
    .venv/bin/python bench/sim_capacity.py --ablation          # llmfleet with each part switched off
    .venv/bin/python bench/sim_capacity.py --ranker .cache/ranker --policies fcfs-rr,llm-d,llmfleet

Regimes (what real deployment each stands for):

* conv -- compute-bound chat: Azure conversation trace, llama2-70b on 8 x H100 (TP8),
  max_num_seqs 64, 1.33M KV tokens per engine. KV never binds; the decode batch does.
* mooncake -- prefix-heavy long context: Mooncake's trace (64% of 512-token blocks reused),
  same engines. TTFT SLO 6 s: its prompts average 15k tokens (up to 66k), and even unloaded
  only 84% of them can prefill within 2 s.
* memory -- memory-bound: the same long-context trace on half the GPUs (llama2-70b TP4 on
  H100, 451k KV tokens per engine at vLLM's default 0.9 memory utilisation) with vLLM's
  default max_num_seqs of 256: the KV pool holds about 30 average requests, so KV, not the
  batch limit, decides how many run, and vLLM's head-of-line admission and recompute
  preemption waste capacity.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmfleet.core.config import SchedulingConfig  # noqa: E402
from llmfleet.policies.registry import policy_names  # noqa: E402
from llmfleet.sim.capacity import CapacityStudy  # noqa: E402
from llmfleet.sim.costmodel import load_cost_model  # noqa: E402
from llmfleet.sim.instance import EngineConfig  # noqa: E402
from llmfleet.sim.metrics import Slo  # noqa: E402
from llmfleet.sim.plots import attainment_vs_load  # noqa: E402
from llmfleet.sim.simulator import SimConfig  # noqa: E402

REGIMES = {
    "conv": {"trace": "conv", "cost": "llama2-70b-tp8-h100", "max_running": 64, "ttft": 2.0},
    "mooncake": {"trace": "mooncake", "cost": "llama2-70b-tp8-h100", "max_running": 64, "ttft": 6.0},
    "memory": {"trace": "mooncake", "cost": "llama2-70b-tp4-h100", "max_running": 256, "ttft": 6.0},
}
PEERS = ("fcfs-rr", "least-load", "llm-d", "dynamo")
# llmfleet with one part switched off at a time (label -> scheduling settings).
ABLATION = {
    "fcfs-rr": {"policy": "fcfs-rr"},
    "llm-d": {"policy": "llm-d"},
    "llmfleet": {"policy": "llmfleet"},
    "llmfleet, no prefill pacing": {"policy": "llmfleet", "prefill_pace_tokens": None},
    "llmfleet, 60 s starvation bound": {"policy": "llmfleet", "starvation_bound_seconds": 60},
    "llmfleet, no overtake guard": {"policy": "llmfleet", "starvation_overtake_turns": None},
    "llmfleet, slices of 128": {"policy": "llmfleet", "slice_tokens": 128},
    "ltr (rank order only)": {"policy": "ltr"},
}


def targets(doc: dict) -> list[dict]:
    by = {r["policy"]: r for r in doc["results"]}
    lf, base = by["llmfleet"], by["fcfs-rr"]
    peers = [by[p] for p in PEERS if p in by]
    best_goodput = max(peers, key=lambda r: r["goodput_rate_scale"])
    best_mean = min(peers, key=lambda r: r["at_overload"]["mean_latency_s"])
    o = {k: r["at_overload"] for k, r in by.items()}
    rows = [
        ("goodput llmfleet / best peer", lf["goodput_rate_scale"] / best_goodput["goodput_rate_scale"], best_goodput["policy"]),
        ("goodput llmfleet / fcfs-rr", lf["goodput_rate_scale"] / base["goodput_rate_scale"], "fcfs-rr"),
        ("overload: mean TTFT llmfleet / fcfs-rr", o["llmfleet"]["mean_ttft_s"] / o["fcfs-rr"]["mean_ttft_s"], "fcfs-rr"),
        ("overload: mean e2e llmfleet / best peer", o["llmfleet"]["mean_latency_s"] / best_mean["at_overload"]["mean_latency_s"], best_mean["policy"]),
        ("overload: p99 e2e llmfleet / fcfs-rr", o["llmfleet"]["p99_latency_s"] / o["fcfs-rr"]["p99_latency_s"], "fcfs-rr"),
        ("throughput llmfleet / fcfs-rr", o["llmfleet"]["throughput_tok_s"] / o["fcfs-rr"]["throughput_tok_s"], "fcfs-rr"),
    ]
    if "oracle-srpt" in o:
        gain_oracle = o["fcfs-rr"]["mean_latency_s"] - o["oracle-srpt"]["mean_latency_s"]
        gain = o["fcfs-rr"]["mean_latency_s"] - o["llmfleet"]["mean_latency_s"]
        rows.append(("share of the oracle's mean-latency gain", gain / gain_oracle if gain_oracle > 0 else float("nan"), "oracle-srpt"))
        rows.append(("oracle: goodput / best peer", by["oracle-srpt"]["goodput_rate_scale"] / best_goodput["goodput_rate_scale"], best_goodput["policy"]))
        rows.append(("oracle: mean e2e / best peer", o["oracle-srpt"]["mean_latency_s"] / best_mean["at_overload"]["mean_latency_s"], best_mean["policy"]))
    return [{"metric": m, "value": round(v, 4), "against": a} for m, v, a in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--regime", choices=sorted(REGIMES), action="append", help="default: all")
    ap.add_argument("--policies", default=",".join(policy_names()))
    ap.add_argument("--tau", type=float, default=0.6)
    ap.add_argument("--ranker", default=None, help="learned ranker artifact (adds no rows; replaces the stand-in)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--ablation", action="store_true", help="run llmfleet with each part switched off instead")
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.ablation:
        names = list(ABLATION)
        configs = [SchedulingConfig(**ABLATION[n], ranker=args.ranker) for n in names]
    else:
        names = [n for n in args.policies.split(",") if n]
        configs = [SchedulingConfig(policy=n, ranker=args.ranker) for n in names]
    for regime in args.regime or list(REGIMES):
        r = REGIMES[regime]
        t0 = time.time()
        study = CapacityStudy(
            trace=str(r["trace"]),
            configs=configs,
            labels=names,
            cost=load_cost_model(str(r["cost"])),
            cfg=SimConfig(instances=4, engine=EngineConfig(max_running=int(r["max_running"]))),
            slo=Slo(ttft_s=float(r["ttft"]), tpot_s=0.1),
            tau=args.tau,
            ranker=args.ranker,
            limit=args.limit,
            on_run=lambda lbl, s, summ: print(f"  {lbl:12s} x{s:<7g} {summ['slo_attainment']:.3f}", flush=True),
        )
        doc = study.measure()
        doc["regime"] = regime
        doc["setup"] = {**r, "instances": 4, "tau": args.tau, "ranker": args.ranker, "limit": args.limit}
        if not args.ablation:
            doc["targets"] = targets(doc)
        doc["wall_s"] = round(time.time() - t0, 1)
        stem = f"capacity_{regime}" + ("_ranker" if args.ranker else "") + ("_ablation" if args.ablation else "")
        (out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
        attainment_vs_load(doc, out / f"{stem}.png", f"{regime}: {r['trace']}, {r['cost']}, max_num_seqs {r['max_running']}")
        print(f"== {regime} (overload x{doc['overload_rate_scale']})")
        for res in doc["results"]:
            o = res["at_overload"]
            print(f"  {res['policy']:12s} goodput x{res['goodput_rate_scale']:<7.3f} overload: SLO {o['slo_attainment']:.3f} "
                  f"TTFT {o['mean_ttft_s']:.2f} mean {o['mean_latency_s']:.2f} p99 {o['p99_latency_s']:.2f} tok/s {o['throughput_tok_s']:.0f}")
        for t in doc.get("targets", []):
            print(f"  {t['metric']:45s} {t['value']:.3f} (vs {t['against']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
