"""Simulator fidelity: calibrate the simulator on the live fleet, replay the same window in both.

1. Start the local fleet (2 real vLLM-CPU engines with the tiny model, sidecars).
2. Probe the engines directly (`llmfleet sim calibrate` logic): prefill knots and a decode line.
3. Calibrate on the live fleet: replay a calibration window of the trace (a different one from
   the evaluation's) through the dispatcher, and read, from the engines' and the dispatcher's
   Prometheus histograms and the client's clock, what the data plane adds
   (`llmfleet.sim.fleet_calibrate`, as `llmfleet sim calibrate --fleet` does): the way to the engine, the first token's and the
   last token's way back, and the slice's end reaching the dispatcher; and how much slower the
   engines decoded and prefilled than their probes said (`fit_engine_speeds`: the factors at
   which the simulator, replaying the calibration window, gives the engines' measured mean
   latency and mean prefill time; `calibrated_one_slowdown`, beside it, is the earlier single
   factor fitted on the latency alone).
4. Replay the evaluation window through the real fleet under each policy.
5. Simulate the very same requests (arrival times, prompt and output tokens) with 2 instances and
   the engines' sequence limit: with the probed model alone; calibrated (the probed model slowed
   by the fitted factor, each engine at its own measured speed, plus the data plane); and, for
   comparison, `one_speed` (the same with both engines at one speed) and the earlier calibration
   (`flat_decode`: the decode step flat at the measured inter-token latency, plus the data plane).
   Each engine's speed is also recorded during every real replay.
   The simulator predicts lengths as the dispatcher did: exactly where `max_tokens` fixed them,
   and with `--e2e-workload` the dispatcher's own ranker on each prompt's text.
6. Report the simulator's error on mean TTFT and mean latency per policy, and on the ratio. Two
   diagnostics beside the prediction: `fitted_in_replay` (each replay simulated at the slowdown
   fitted on itself: in sample) and `fitted_on_the_others` (each policy at the slowdown fitted on
   the other policies' replays: out of sample, but from the same minutes as the replays).

Reproduce (writes bench/results/sim_fidelity.{json,png}):
    .venv/bin/python bench/sim_fidelity.py
On the e2e benchmark's own workload (bench/results/sim_fidelity_e2e.{json,png}, with --out elsewhere and renamed):
    .venv/bin/python bench/sim_fidelity.py --e2e-workload --policies fcfs-rr,least-load,llmfleet \
        --requests 200 --rate 3.0 --max-num-seqs 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

from llmfleet.core.config import SchedulingConfig
from llmfleet.core.prediction import LengthPredictor
from llmfleet.demo.run import DEFAULT_RANKER_DIR, ensure_ranker, policy_config
from llmfleet.demo.workload import WorkloadRequest, WorkloadSpec, build_workload
from llmfleet.dispatcher.model import prefix_hashes
from llmfleet.dispatcher.predictor import load_predictor
from llmfleet.engine.client import EngineClient
from llmfleet.engine.process import free_port
from llmfleet.fleet.cli import add_unconfined_engines
from llmfleet.fleet.local import FleetSpec, LocalFleet
from llmfleet.sim.calibrate import calibrate_engine
from llmfleet.sim.fleet_calibrate import (
    Window,
    calibrate_on_fleet,
    measure_window,
    scrape_gauges,
    with_dataplane,
    with_slowdown,
)
from llmfleet.sim.instance import EngineConfig
from llmfleet.sim.live_predictions import ExactPredictor, PromptTextPredictor
from llmfleet.sim.runner import run_policies
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


def measured_replay(
    fleet: LocalFleet, urls: list[str], config: SchedulingConfig, workload: list, hidden_length: bool = False
) -> Window:
    """Replay `workload` under `config` and read what the engines (each apart) and the data plane did.
    The engines' prefix caches are emptied first: the simulator replays the window with nothing
    cached, and no replay should find the prompts of the one before it. With a ranker in `config`,
    its drift guard's state at the end is kept in `GUARDS` (the simulator never falls back)."""
    fleet.reset_prefix_caches()
    metrics_port = free_port()
    dispatcher = fleet.start_dispatcher(config, metrics_port=metrics_port)
    url = f"http://127.0.0.1:{metrics_port}"
    window = asyncio.run(
        measure_window(dispatcher.address, urls, url, workload, one_slice_each=False, hidden_length=hidden_length)
    )
    if config.ranker:
        GUARDS.append({"policy": config.policy, **ranker_guard(url)})
    fleet.stop_dispatcher()
    return window


GUARDS: list[dict] = []


def ranker_guard(url: str) -> dict[str, float]:
    """The dispatcher's ranker gauges: its tau and the prompt-length baseline's on served requests,
    and whether the baseline stands in for it."""
    names = {"llmfleet_dispatcher_ranker_tau": "tau", "llmfleet_dispatcher_ranker_prompt_length_tau": "prompt_length_tau",
             "llmfleet_dispatcher_ranker_fallback": "fallback"}  # fmt: skip
    return scrape_gauges(url, names)


def calibration_replay(fleet: LocalFleet, urls: list[str], calibration: list, hidden_length: bool) -> Window:
    """The calibration window, under `fcfs-rr`."""
    return measured_replay(fleet, urls, SchedulingConfig(policy="fcfs-rr"), calibration, hidden_length)


async def sim_trace(url: str, workload: list[WorkloadRequest]) -> tuple[list[TraceRequest], dict[str, str], int]:
    """The workload as the simulator's trace, its prompt texts by request id, and the engine's KV
    block size. Text prompts are tokenized by the engine, as the fleet tokenizes them, and their
    full blocks named by the dispatcher's hash chain: the held-out pool has fewer prompts than a
    window has requests, and a repeated prompt finds its blocks cached in vLLM, so it must in the
    simulator too. Token-id prompts (the trace's random ones) are unique and stay as they were."""
    client = EngineClient(url)
    try:
        block = (await client.load()).block_size or 16
        trace, texts = [], {}
        for r in workload:
            if r.prompt_text is None:
                trace.append(TraceRequest(r.request_id, r.arrival_s, len(r.prompt_token_ids), r.output_tokens))
                continue
            ids = await client.tokenize(r.prompt_text)
            texts[r.request_id] = r.prompt_text
            trace.append(TraceRequest(r.request_id, r.arrival_s, len(ids), r.output_tokens, prefix_hashes(ids, block)))
    finally:
        await client.aclose()
    return trace, texts, block


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--policies", default="fcfs-rr,llmfleet")
    ap.add_argument("--requests", type=int, default=150)
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--start-index", type=int, default=2000, help="the evaluation window's first trace request")
    ap.add_argument("--calibration-start-index", type=int, default=1000, help="the calibration window's")
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--slice-tokens", type=int, default=None, help="sliceTokens for every policy (default: none)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per engine probe")
    ap.add_argument(
        "--real-runs", type=int, default=2, help="replays of the window per policy on the real fleet (their spread is the noise floor)"
    )
    ap.add_argument(
        "--calibrate-beside-each", action="store_true",
        help="also replay the calibration window right before every evaluation replay, and simulate each "
        "replay with the model calibrated beside it (this machine's speed drifts within minutes)",
    )
    ap.add_argument(
        "--e2e-workload", action="store_true",
        help="replay bench/dataplane_e2e.py's workload instead of the trace's random prompts: the ranker's held-out "
        "alpaca_eval prompts with a real model's answer lengths, hidden from the scheduler (an EOS ends each "
        "request), and the ranker in every policy's config. The simulator gets the prompts' token counts and KV "
        "blocks from the engine's tokenizer and the dispatcher's own predictor on the prompt text",
    )
    ap.add_argument(
        "--ranker", type=Path, default=None,
        help=f"with --e2e-workload: the ranker artifact (default {DEFAULT_RANKER_DIR}; trained on first use if missing)",
    )
    add_unconfined_engines(ap)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    policies = args.policies.split(",")
    hidden = args.e2e_workload
    if args.ranker is not None and not hidden:
        ap.error("--ranker only applies with --e2e-workload (the trace's random prompts carry no text to rank)")
    ranker = str(ensure_ranker(args.ranker or DEFAULT_RANKER_DIR)) if hidden else None
    args.ranker = ranker  # the setup recorded with the results names the artifact used
    configs = [policy_config(p, args.slice_tokens, ranker) for p in policies]  # fails on a bad entry before the fleet starts
    pool = str(Path(ranker) / "holdout_pool.jsonl") if ranker else None
    workload = build_workload(WorkloadSpec(count=args.requests, rate=args.rate, start_index=args.start_index, prompt_pool=pool))
    calibration = build_workload(  # another shuffle of the pool: other prompts in the same order of arrival
        WorkloadSpec(count=args.requests, rate=args.rate, start_index=args.calibration_start_index, prompt_pool=pool, seed=1)
    )
    real: dict[str, dict] = {}
    spec = FleetSpec(engines=2, max_num_seqs=args.max_num_seqs, confine_engines=not args.unconfined_engines, engine_dev_endpoints=True)
    with LocalFleet(spec) as fleet:
        urls = [e.url for e in fleet.engines]
        probed = asyncio.run(calibrate_pair(urls, args.repeats))
        trace, texts, block = asyncio.run(sim_trace(urls[0], workload))
        cal_trace, _, _ = asyncio.run(sim_trace(urls[0], calibration))
        window = calibration_replay(fleet, urls, calibration, hidden)
        runs: dict[str, list[Window]] = {p: [] for p in policies}
        beside: dict[str, list[Window]] = {p: [] for p in policies}
        for rep in range(args.real_runs):  # the order alternates, so neither policy always goes first
            for policy, config in zip(*((policies, configs) if rep % 2 == 0 else (policies[::-1], configs[::-1])), strict=True):
                if args.calibrate_beside_each:
                    beside[policy].append(calibration_replay(fleet, urls, calibration, hidden))
                runs[policy].append(measured_replay(fleet, urls, config, workload, hidden))
        for policy, got in runs.items():
            real[policy] = {
                "mean_ttft_s": statistics.fmean(w.client_ttft_s for w in got),
                "mean_latency_s": statistics.fmean(w.client_e2e_s for w in got),
                "runs": [
                    {"mean_ttft_s": w.client_ttft_s, "mean_latency_s": w.client_e2e_s, "engine_speeds": w.engine_speeds,
                     "engine_latency_s": w.engine_latency_s, "engine_prefill_s": w.engine_prefill_s,
                     "slices": w.slices, "requests": w.requests}
                    for w in got
                ],  # fmt: skip
            }
    # The engine's KV block is also the prefix cache's unit, as in vLLM.
    cfg = SimConfig(instances=2, engine=EngineConfig(max_running=args.max_num_seqs, token_budget=2048, prefix_block_tokens=block))
    # The engines' slowdown under traffic, fitted on the calibration window's requests.
    source = f"probes + live fleet, trace window {args.calibration_start_index}"
    fcfs = SchedulingConfig(policy="fcfs-rr")
    fitted = calibrate_on_fleet(probed, window, cal_trace, cfg, fcfs, source)  # type: ignore[arg-type]
    # The same calibration with both engines at one speed: what modelling each engine's speed adds.
    one_speed = calibrate_on_fleet(probed, window, cal_trace, cfg, fcfs, source + ", one speed", per_engine=False)  # type: ignore[arg-type]
    calibrated, slowdown, terms = fitted.model, fitted.slowdown, window.terms
    flat_decode = with_dataplane(probed, terms, source + ", flat decode step")  # type: ignore[arg-type]
    # What the dispatcher predicted: exact lengths where max_tokens fixed them, else its ranker on the text.
    predictor: LengthPredictor = PromptTextPredictor(load_predictor(ranker), texts) if ranker else ExactPredictor()
    # The earlier calibration, side by side: one factor slows prefill and decode alike.
    shared = calibrate_on_fleet(probed, window, cal_trace, cfg, fcfs, source + ", one slowdown", prefill_apart=False)  # type: ignore[arg-type]
    models = (
        ("probed", probed, cfg),
        ("flat_decode", flat_decode, cfg),
        ("one_speed", one_speed.model, cfg),
        ("calibrated", calibrated, fitted.sim_config),
        ("calibrated_one_slowdown", shared.model, shared.sim_config),
    )
    sims = {
        label: {run.summary["policy"]: run.summary for run in run_policies(trace, configs, cost, sim_cfg, predictor)}  # type: ignore[arg-type]
        for label, cost, sim_cfg in models
    }
    in_replay: dict[str, list[dict]] = {}
    for suffix, prefill_apart in (("", True), ("_one_slowdown", False)):
        # A diagnostic, not a prediction: each real replay simulated with the engines' speed fitted on
        # that replay itself (in sample). What is left is the model's structure, not the machine's drift.
        own_fits: dict[str, list[dict]] = {}
        for (policy, windows), config in zip(runs.items(), configs, strict=True):
            for w in windows:
                if w.slices > w.requests:
                    continue  # sliced: the terms assume one engine request per request
                own = calibrate_on_fleet(probed, w, trace, cfg, config, source + ", fitted on the replay itself",  # type: ignore[arg-type]
                                         prefill_apart=prefill_apart)  # fmt: skip
                summary = run_policies(trace, [config], own.model, own.sim_config, predictor)[0].summary
                own_fits.setdefault(policy, []).append({"slowdown": own.slowdown, "prefill_slowdown": own.prefill_slowdown,
                                                        "mean_ttft_s": summary["mean_ttft_s"],
                                                        "mean_latency_s": summary["mean_latency_s"]})  # fmt: skip
        in_replay.update({f"{p}{suffix}": rs for p, rs in own_fits.items()})
        if len(own_fits) != len(policies):
            continue
        sims[f"fitted_in_replay{suffix}"] = {
            p: {m: statistics.fmean(r[m] for r in rs) for m in ("mean_ttft_s", "mean_latency_s")} for p, rs in own_fits.items()
        }
        if len(policies) < 2:
            continue
        # Out of sample, from the same minutes: each policy at the engines' slowdown fitted on the
        # *other* policies' replays (their mean). No replay's own latency enters its prediction,
        # but the machine's speed while the policies ran does, which a calibration minutes
        # earlier cannot know (near the engines' capacity a few percent of speed moves TTFT a lot).
        sims[f"fitted_on_the_others{suffix}"] = {}
        for policy, config in zip(policies, configs, strict=True):
            theirs = [r for p, rs in own_fits.items() if p != policy for r in rs]
            k = statistics.fmean(r["slowdown"] for r in theirs)
            pk = statistics.fmean(r["prefill_slowdown"] for r in theirs) if prefill_apart else None
            others = with_slowdown(probed, terms, k, source + ", slowdown fitted on the other policies' replays", pk)  # type: ignore[arg-type]
            summary = run_policies(trace, [config], others, fitted.sim_config, predictor)[0].summary
            sims[f"fitted_on_the_others{suffix}"][policy] = {"slowdown": k, "prefill_slowdown": pk,
                                                             "mean_ttft_s": summary["mean_ttft_s"],
                                                             "mean_latency_s": summary["mean_latency_s"]}  # fmt: skip
    beside_report: dict[str, list[dict]] = {}
    if args.calibrate_beside_each:
        # Each real replay against the simulator calibrated right before it; the mean over replays.
        sims["calibrated_beside"] = {}
        for (policy, cals), config in zip(beside.items(), configs, strict=True):
            per_replay = []
            for w in cals:
                beside_fit = calibrate_on_fleet(probed, w, cal_trace, cfg, fcfs, source + ", calibrated beside the replay")  # type: ignore[arg-type]
                summary = run_policies(trace, [config], beside_fit.model, beside_fit.sim_config, predictor)[0].summary
                per_replay.append({"slowdown": beside_fit.slowdown, "engine_latency_s": w.engine_latency_s,
                                   "mean_ttft_s": summary["mean_ttft_s"], "mean_latency_s": summary["mean_latency_s"]})  # fmt: skip
            beside_report[policy] = per_replay
            sims["calibrated_beside"][policy] = {
                m: statistics.fmean(r[m] for r in per_replay) for m in ("mean_ttft_s", "mean_latency_s")
            }
    rows = []
    for name in policies:
        row: dict[str, object] = {"policy": name}
        for metric in ("mean_ttft_s", "mean_latency_s"):
            row[f"real_{metric}"] = real[name][metric]
            got = [r[metric] for r in real[name]["runs"]]
            row[f"real_{metric}_spread"] = (max(got) - min(got)) / real[name][metric]  # run to run, same requests
            for label, by_policy in sims.items():
                value = by_policy[name][metric]
                row[f"{label}_{metric}"] = value
                row[f"{label}_{metric}_error"] = abs(value - real[name][metric]) / real[name][metric]
        rows.append(row)
    ratios = {}
    if len(policies) >= 2:  # the last policy against the first, as "of" says
        a, b = policies[-1], policies[0]
        for metric in ("mean_ttft_s", "mean_latency_s"):
            ratios[metric] = {
                "real": real[a][metric] / real[b][metric],
                **{label: sims[label][a][metric] / sims[label][b][metric] for label in sims},
            }
    payload = {
        "rows": rows,
        "ratios": {"of": f"{policies[-1]} / {policies[0]}", **ratios},
        "target": {"error_max": 0.15, "ratio_error_max": 0.10},
        "real_runs": real,  # each replay's means, in the order they ran
        "calibrated_beside_each": beside_report,
        "fitted_in_replay": in_replay,
        "predictor": {"simulated": predictor.name, "ranker_guard_after_each_replay": GUARDS},
        "dataplane_terms": asdict(terms),
        "engine_slowdown": {"factor": slowdown, "engine_latency_s": window.engine_latency_s,
                            "engine_speeds": fitted.sim_config.instance_speeds, "one_speed_factor": one_speed.slowdown,
                            "prefill_factor": fitted.prefill_slowdown, "engine_prefill_s": window.engine_prefill_s,
                            "one_slowdown_factor": shared.slowdown},
        "cost_model": {
            "probed": asdict(probed),  # type: ignore[call-overload]
            "calibrated": asdict(calibrated),
            "flat_decode": asdict(flat_decode),
        },
        "setup": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": "python bench/sim_fidelity.py " + " ".join(argv or sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sim_fidelity.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    _plot(rows, args.out / "sim_fidelity.png")
    print(json.dumps({"rows": rows, "ratios": ratios, "terms": asdict(terms)}, indent=2))
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    """Real against simulated, per policy: the calibrated predictions with prefill's slowdown
    apart and with one slowdown, and the same fitted on each replay itself where the run has
    them; the calibrated models' errors above each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    series = [(label, name) for label, name in (
        ("real", "real fleet"), ("calibrated", "calibrated: prefill's slowdown apart"),
        ("calibrated_one_slowdown", "calibrated: one slowdown"),
        ("fitted_in_replay", "in sample: prefill's slowdown apart"),
        ("fitted_in_replay_one_slowdown", "in sample: one slowdown"),
    ) if f"{label}_mean_latency_s" in rows[0]]  # fmt: skip
    width = 0.8 / len(series)
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, metric, title in zip(axes, ("mean_ttft_s", "mean_latency_s"), ("mean TTFT (s)", "mean latency (s)"), strict=True):
        for k, (label, name) in enumerate(series):
            ax.bar(x + (k - (len(series) - 1) / 2) * width, [r[f"{label}_{metric}"] for r in rows], width, label=name)
        top = max(r[f"{label}_{metric}"] for r in rows for label, _ in series)
        for i, r in enumerate(rows):
            errors = " / ".join(f"{r[f'{label}_{metric}_error']:.0%}" for label in ("calibrated", "calibrated_one_slowdown")
                                if f"{label}_{metric}_error" in r)  # fmt: skip
            ax.text(i, top * 1.04, f"calibrated err {errors}", ha="center", fontsize=8)
        ax.set_ylim(0, top * 1.12)
        ax.set_xticks(x, [r["policy"] for r in rows])
        ax.set_ylabel(title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(series)), fontsize=8)
    fig.suptitle("Simulator vs real vLLM-CPU fleet, same requests")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
