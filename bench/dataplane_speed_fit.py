"""The simulator beside each live replay, at that replay's own engine speed (bench/DATAPLANE.md section 4).

A paired probe's replays differ by up to a factor of two for one policy, because the shared
machine's speed moves while the fleet runs near its capacity. This asks how much of that the
replay's mean engine speed explains, and whether any policy does worse live than the simulator
says it should at that speed. For each replay in a file of every request's outcome (from
`bench/dataplane_probe.py --per-request`, `llmfleet demo --out DIR`'s requests.jsonl or
`bench/dataplane_e2e.py`'s dataplane_e2e_requests.jsonl) it bisects the calibrated cost model's
slowdown until the simulated mean service time (first token to last, which no queue order
changes) matches the replay's, then fits the speed's course within the replay in 10-s phases to
the replay's time per token (`llmfleet.demo.drift.fit_phases`; `--mean-speed` skips this, as the
bench did before the simulator had speed phases), and simulates the same requests under the
same policy at that course of speeds. It also reports mean TTFT by quartile of the live
ranker's prediction, shortest first, live and simulated: whether the order reached the requests
it should, and where the live fleet's wait differs from the simulator's. Last, per workload, each
variant's ratio to a baseline with the drift taken out (`adjust`): the simulator's ratio at one
common speed, times the ratio of the two variants' live / simulated residuals.

    .venv/bin/python bench/dataplane_speed_fit.py \\
        bench/results/dataplane_probe_4slots_4.0rps_w2000_order_requests.jsonl --rate 4.0 --start-index 2000 \\
        --out bench/results/dataplane_speed_fit_4.0rps_w2000.json

The probe's files from before its lines carried their rate and window need `--rate` and
`--start-index`; newer files, the demo's and the e2e bench's say them on every line.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim_guard import DEMO_FLEET, calibrated_cost, demo_trace, live_ranker  # noqa: E402  (this folder)

from llmfleet.core.prediction import PredictionInput  # noqa: E402
from llmfleet.demo.drift import Phases, ReplayFit, adjusted_table, fit_replay  # noqa: E402
from llmfleet.demo.run import DEFAULT_RANKER_DIR, ensure_ranker, policy_config  # noqa: E402
from llmfleet.policies.registry import make_policy  # noqa: E402
from llmfleet.sim.live_predictions import PromptTextPredictor  # noqa: E402
from llmfleet.sim.simulator import Simulator  # noqa: E402


def quartile_ttft(rows: dict[str, tuple[float, float, float]], score: dict[str, float]) -> list[float]:
    """Mean TTFT of each quarter of the requests, ordered by `score` (lowest first)."""
    ids = sorted(rows, key=lambda i: score[i])
    quarters: list[list[float]] = [[], [], [], []]
    for k, i in enumerate(ids):
        a, t, _ = rows[i]
        quarters[min(3, 4 * k // len(ids))].append(t - a)
    return [round(statistics.fmean(q), 3) for q in quarters]


def groupby_setup(rows: list[dict]) -> dict[tuple[float, int], list[dict]]:
    """The replays of each workload (rate, window), in the order they ran."""
    out: dict[tuple[float, int], list[dict]] = defaultdict(list)
    for r in rows:
        out[(r["rate"], r["start_index"])].append(r)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("requests", type=Path, help="every request's outcome: dataplane_probe --per-request, the demo's "
                    "requests.jsonl or dataplane_e2e_requests.jsonl")  # fmt: skip
    ap.add_argument("--rate", type=float, default=None, help="the replays' rate, where the file's lines do not say")
    ap.add_argument("--start-index", type=int, default=None, help="the replays' window, where the file's lines do not say")
    ap.add_argument("--baseline", default="fcfs-rr", help="the variant the ratios are to (default: %(default)s; "
                    "where a workload's replays have none, the first that ran)")  # fmt: skip
    ap.add_argument("--mean-speed", action="store_true", help="fit each replay's mean engine speed only, not its "
                    "course in 10-s phases (what this bench did before the simulator had speed phases)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)
    ranker = ensure_ranker(DEFAULT_RANKER_DIR)
    cost = calibrated_cost()
    replays: dict[tuple[int, str], dict[str, tuple[float, float, float]]] = defaultdict(dict)
    where: dict[tuple[int, str], tuple[float, int]] = {}
    for line in args.requests.read_text().splitlines():
        d = json.loads(line)
        rate, start = d.get("rate", args.rate), d.get("start_index", args.start_index)
        if rate is None or start is None:
            ap.error("the file's lines do not carry their rate and window: give --rate and --start-index")
        where[(d["replay"], d["variant"])] = (float(rate), int(start))
        if d["status"] == "ok":
            replays[(d["replay"], d["variant"])][d["request_id"]] = (d["arrival_s"], d["first_token_s"], d["finish_s"])
    setups: dict[tuple[float, int], tuple[list, PromptTextPredictor, dict[str, float]]] = {}

    def setup(rate: float, start: int) -> tuple[list, PromptTextPredictor, dict[str, float]]:
        """The replay's requests as a trace, the live ranker on them, and its predictions."""
        if (rate, start) not in setups:
            workload, trace = demo_trace(rate, start, ranker)
            predictor = live_ranker(workload, ranker)
            inputs = [PredictionInput(t.request_id, t.prompt_tokens) for t in trace]
            score = {it.request_id: e.expected_tokens for it, e in zip(inputs, predictor.predict(inputs), strict=True)}
            setups[(rate, start)] = (trace, predictor, score)
        return setups[(rate, start)]

    def simulate(key: tuple[int, str], slowdown: float, phases: Phases | None = None) -> dict[str, tuple[float, float, float]]:
        trace, predictor, _ = setup(*where[key])
        records = Simulator(trace, make_policy(policy_config(key[1], ranker=str(ranker))), cost.slowed(slowdown),
                            replace(DEMO_FLEET, speed_phases=phases), predictor=predictor).run().records  # fmt: skip
        return {r.request_id: (r.arrival_s, r.first_token_s, r.finish_s) for r in records}

    out = []
    fits: dict[tuple[int, str], ReplayFit] = {}
    for (index, variant), rows in sorted(replays.items()):
        trace, _, score = setup(*where[(index, variant)])
        missing = set(rows) - {t.request_id for t in trace}
        if missing:
            rate, start = where[(index, variant)]
            ap.error(f"replay {index}: {len(missing)} requests are not in the demo's workload at {rate:g}/s from {start}")
        key = (index, variant)
        tokens = None if args.mean_speed else {t.request_id: t.output_tokens for t in trace}
        fit = fits[key] = fit_replay(str(index), variant, rows, functools.partial(simulate, key), tokens)
        live, sim, at_mean = fit.live, fit.simulated, fit.simulated_at_mean_speed or fit.simulated
        simulated = simulate(key, fit.slowdown, fit.phases)
        rate, start = where[key]
        row = {
            "replay": index, "variant": variant, "rate": rate, "start_index": start, "completed": len(rows),
            "engine_slowdown": round(fit.slowdown, 3),
            "speed_phases": [round(f, 3) for _, f in fit.phases] if fit.phases else None,
            "live": {k: round(v, 3) for k, v in live.items()}, "simulated": {k: round(v, 3) for k, v in sim.items()},
            "live_over_simulated": {k: round(live[k] / sim[k], 3) for k in ("latency_s", "ttft_s")},
            "live_over_simulated_at_mean_speed": {k: round(live[k] / at_mean[k], 3) for k in ("latency_s", "ttft_s")},
            "ttft_by_predicted_quartile_s": {"live": quartile_ttft(rows, score), "simulated": quartile_ttft(simulated, score)},
        }  # fmt: skip
        out.append(row)
        print(f"#{index} {variant:40s} slowdown x{fit.slowdown:.3f} | latency live {live['latency_s']:.2f} sim {sim['latency_s']:.2f} "
              f"({row['live_over_simulated']['latency_s']:.2f}) | TTFT live {live['ttft_s']:.2f} sim {sim['ttft_s']:.2f} "
              f"| TTFT by predicted quartile, live {row['ttft_by_predicted_quartile_s']['live']} "
              f"sim {row['ttft_by_predicted_quartile_s']['simulated']}", flush=True)  # fmt: skip
    adjusted = []
    for (rate, start), rows in groupby_setup(out).items():
        variants = list(dict.fromkeys(r["variant"] for r in rows))
        base = args.baseline if args.baseline in variants else variants[0]
        common = statistics.median(r["engine_slowdown"] for r in rows)
        key = {r["variant"]: (r["replay"], r["variant"]) for r in rows}
        common_rows = {v: simulate(key[v], common) for v in variants}
        table = adjusted_table([fits[(r["replay"], r["variant"])] for r in rows], base, common_rows)
        adjusted.append({"rate": rate, "start_index": start, "baseline": base, "common_slowdown": round(common, 3), "ratios": table})
        print(f"{rate:g}/s from {start}, to {base}, the simulator at x{common:.3f}: " + "; ".join(
            f"{v} live {t['live_ratio']:.2f}, adjusted {t['adjusted_ratio']:.2f} {t.get('adjusted_ratio_ci95')}, "
            f"TTFT {t.get('adjusted_ttft_ratio')} {t.get('adjusted_ttft_ratio_ci95')}" for v, t in table.items() if v != base))  # fmt: skip
    if args.out:
        doc = {"requests": str(args.requests), "replays": out, "drift_adjusted": adjusted,
               "command": "python bench/dataplane_speed_fit.py " + " ".join(sys.argv[1:] if argv is None else argv)}  # fmt: skip
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
