"""Replay the demo's workload under each policy on one local fleet, sampling the dispatcher's
Stats every 100 ms: how full the engines were while the dispatcher held requests back.

`llmfleet:N` runs llmfleet with engineLookahead N. Prints one JSON line per policy.

Reproduce:
    .venv/bin/python bench/admission_probe.py 4.0 fcfs-rr,llmfleet:0,llmfleet:2,least-load,llmfleet:4
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import grpc

from llmfleet.core.config import SchedulingConfig
from llmfleet.demo.replay import Outcome, replay
from llmfleet.demo.report import summarize_outcomes
from llmfleet.demo.run import DEFAULT_RANKER_DIR
from llmfleet.demo.workload import WorkloadRequest, WorkloadSpec, build_workload
from llmfleet.fleet.local import FleetSpec, LocalFleet
from llmfleet.v1 import dispatcher_pb2, dispatcher_pb2_grpc

Row = tuple[float, int, list[tuple[int, int, int]]]  # time, queue length, per pod (inflight, running, waiting)


async def sample(address: str, stop: asyncio.Event, rows: list[Row]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = dispatcher_pb2_grpc.DispatcherStub(channel)
        t0 = time.monotonic()
        while not stop.is_set():
            s = await stub.Stats(dispatcher_pb2.StatsRequest())
            pods = [(p.inflight, p.engine_running, p.engine_waiting) for p in s.pods]
            rows.append((time.monotonic() - t0, s.queue_length, pods))
            await asyncio.sleep(0.1)


async def run(address: str, workload: list[WorkloadRequest]) -> tuple[list[Outcome], list[Row]]:
    stop = asyncio.Event()
    rows: list[Row] = []
    task = asyncio.create_task(sample(address, stop, rows))
    outcomes = await replay(address, workload, hidden_length=True)
    stop.set()
    await task
    return outcomes, rows


def report(policy: str, outcomes: list[Outcome], rows: list[Row], slots: int) -> dict[str, Any]:
    s = summarize_outcomes(policy, outcomes, [1.0])
    queued = [r for r in rows if r[1] > 0]
    n = max(1, len(queued))
    return {
        "policy": policy,
        "mean": round(s["mean_latency_s"], 2),
        "ttft": round(s["mean_ttft_s"], 2),
        "tok_s": round(s["throughput_tok_s"]),
        "frac_queued": round(len(queued) / len(rows), 2),
        "dispatcher_free_slots_while_queued": round(sum(sum(max(0, slots - p[0]) for p in r[2]) for r in queued) / n, 2),
        "engine_free_slots_while_queued": round(sum(sum(max(0, slots - p[1]) for p in r[2]) for r in queued) / n, 2),
        "mean_inflight": round(sum(sum(p[0] for p in r[2]) for r in rows) / len(rows), 2),
        "mean_engine_running": round(sum(sum(p[1] for p in r[2]) for r in rows) / len(rows), 2),
        # Does the ranking show? Mean TTFT of the shortest and the longest third of the requests.
        **ttft_by_length(outcomes),
    }


def ttft_by_length(outcomes: list[Outcome]) -> dict[str, float]:
    done = sorted((o for o in outcomes if o.ok and o.first_token_s is not None), key=lambda o: o.tokens)
    third = max(1, len(done) // 3)

    def mean_ttft(group: list[Outcome]) -> float:
        return round(sum(o.first_token_s - o.arrival_s for o in group if o.first_token_s) / len(group), 2)

    return {"ttft_short_third": mean_ttft(done[:third]), "ttft_long_third": mean_ttft(done[-third:])}


def main() -> None:
    rate, policies = float(sys.argv[1]), sys.argv[2].split(",")
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    pool = str(DEFAULT_RANKER_DIR / "holdout_pool.jsonl")
    workload = build_workload(WorkloadSpec(count=count, rate=rate, prompt_pool=pool))
    with LocalFleet(FleetSpec(engines=2)) as fleet:
        for policy in policies:
            name, _, lookahead = policy.partition(":")
            fields: dict[str, Any] = {"policy": name, "ranker": str(DEFAULT_RANKER_DIR)}
            if lookahead:
                fields["engineLookahead"] = int(lookahead)
            config = SchedulingConfig.model_validate(fields)
            dispatcher = fleet.start_dispatcher(config)
            outcomes, rows = asyncio.run(run(dispatcher.address, workload))
            print(json.dumps(report(policy, outcomes, rows, fleet.spec.max_num_seqs)), flush=True)


if __name__ == "__main__":
    main()
