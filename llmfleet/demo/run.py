"""The demo: one local fleet, the same workload replayed under each policy, side by side.

The fleet (engines and sidecars) stays up across policies; only the dispatcher is restarted with
each policy, so every policy meets the same engines in the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmfleet.core.config import SchedulingConfig
from llmfleet.demo.drift import drift_adjusted_ratios
from llmfleet.demo.load import (
    MAX_QUEUE_REPLAYS,
    check_rate_options,
    closest_rate,
    next_rate,
    queue_share,
    rate_for_load,
    saturated_throughput,
)
from llmfleet.demo.replay import Outcome, replay
from llmfleet.demo.report import (
    BASELINE,
    EARLIER,
    adjusted_note,
    append_records,
    beyond_drift,
    drift_band,
    outcome_records,
    plot,
    print_table,
    ratio_rows,
    results_json,
    summarize_outcomes,
    write_results,
)
from llmfleet.demo.workload import WorkloadRequest, WorkloadSpec, build_workload
from llmfleet.fleet.local import FleetSpec, LocalFleet


@dataclass
class DemoOptions:
    policies: list[str] = field(default_factory=lambda: ["fcfs-rr", "least-load", "llmfleet"])
    fleet: FleetSpec = field(default_factory=FleetSpec)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    slice_tokens: int | None = None  # the scheduling config's sliceTokens (None: no slices)
    ranker: str | None = None
    hidden_length: bool = True
    out_dir: Path | None = None
    log_dir: Path | None = None
    # Offered load as a fraction of the fleet's capacity, measured right before the replays; the
    # arrival rate follows from it and `workload.rate` is ignored (None: use `workload.rate`).
    load: float | None = None
    # Instead: the share of fcfs-rr's latency to be spent before the first token; the rate is found
    # by replaying the window under fcfs-rr, starting at `workload.rate` (None: use the rate as is).
    queue_share: float | None = None


# The `llmfleet-oracle` entry: llmfleet told every request's true length, with nothing holding the shortest
# back (the overtake guard off), so it orders by exact remaining work. The requests and the
# engines' work are the same as the other entries' (`replay`'s `tell_lengths`); only the
# scheduler's knowledge differs. Beside llmfleet it bounds what any length ranker could add to
# llmfleet's mechanism on the same replay. (The simulator's `oracle-srpt` is another bound: preemptive
# SRPT in slices, which needs every length inside the policy.)
ORACLE = "llmfleet-oracle"
ORACLE_SETTINGS: dict[str, Any] = {"policy": "llmfleet", "starvationOvertakeTurns": None}


def is_oracle(entry: str) -> bool:
    """Whether a `--policies` entry is the oracle, whose replay tells the dispatcher each length."""
    return entry.split(":")[0] == ORACLE


def policy_config(entry: str, slice_tokens: int | None = None, ranker: str | None = None) -> SchedulingConfig:
    """The scheduling config one `--policies` entry names: a policy, optionally with settings by
    their CRD names after colons, such as `llmfleet:engineLookahead=1` (YAML values; `null` unsets).
    `llmfleet-oracle` names llmfleet with every length known (`ORACLE_SETTINGS`; settings may follow too).

    The entry itself labels the results, so two settings of one policy can run side by side.
    Raises ValueError naming the problem (an unknown policy or setting, a bad value)."""
    name, *settings = entry.split(":")
    data: dict[str, Any] = {"policy": name, "sliceTokens": slice_tokens, "ranker": ranker}
    if name == ORACLE:
        data.update(ORACLE_SETTINGS)
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise ValueError(f"{entry!r}: expected policy:setting=value, got {setting!r}")
        data[key] = yaml.safe_load(value)
    try:
        return SchedulingConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'policy'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{entry!r}: {problems}") from None


DEFAULT_RANKER_DIR = Path(__file__).resolve().parents[2] / ".cache" / "ranker"
RANKER_TRAINING_MODEL = "Meta-Llama-3-8B-Instruct"


def ensure_ranker(path: Path) -> Path:
    """Train the demo's ranker once (about half a minute) on 80% of one model's alpaca_eval answers.

    The other 20% (the artifact's `holdout_pool.jsonl`) are the demo's prompts, so the ranker is
    always judged on prompts it never saw.
    """
    if (path / "manifest.json").exists():
        return path
    from llmfleet.sim.costmodel import DATA_DIR

    data = DATA_DIR / "alpaca_eval" / RANKER_TRAINING_MODEL / "model_outputs.json"
    if not data.exists():
        raise FileNotFoundError(f"alpaca_eval data not found at {data}; set LLMFLEET_SHARED_DATA to the shared data folder")
    subprocess.run(
        [sys.executable, "-m", "llmfleet.cli", "ranker", "train", "--data", str(data), "--out", str(path)], check=True
    )
    return path


async def busy_sampler(address: str, stop: asyncio.Event, interval_s: float = 0.25) -> dict[str, float]:
    """Seconds each pod had at least one slice in flight, sampled from the dispatcher's Stats."""
    import grpc

    from llmfleet.v1 import dispatcher_pb2, dispatcher_pb2_grpc

    busy: dict[str, float] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = dispatcher_pb2_grpc.DispatcherStub(channel)
        last = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            now = time.monotonic()
            try:
                stats = await stub.Stats(dispatcher_pb2.StatsRequest(), timeout=2.0)
            except grpc.aio.AioRpcError:
                last = now
                continue
            for pod in stats.pods:
                busy.setdefault(pod.pod_id, 0.0)
                if pod.inflight > 0:
                    busy[pod.pod_id] += now - last
            last = now
    return busy


async def run_policy(
    address: str,
    workload: Sequence[WorkloadRequest],
    hidden_length: bool,
    on_done: Callable[[Outcome], None],
    tell_lengths: bool = False,
) -> tuple[list[Outcome], dict[str, float]]:
    stop = asyncio.Event()
    sampler = asyncio.create_task(busy_sampler(address, stop))
    try:
        outcomes = await replay(address, workload, hidden_length=hidden_length, tell_lengths=tell_lengths, on_done=on_done)
    finally:
        stop.set()
        busy = await sampler
    return outcomes, busy


WARM_UP_REQUESTS = 32


def warm_up(fleet: LocalFleet, workload: Sequence[WorkloadRequest]) -> None:
    """Serve a burst of the workload's requests once, unmeasured, before the first policy.

    Fresh engines serve their first requests slower (allocation, first-run code paths), and the
    first policy (always `fcfs-rr`) would pay for it alone. Two otherwise identical runs without
    a warm-up gave `fcfs-rr` mean latencies of 6.1 s and 4.2 s; this removes one cause of that
    spread (machine noise remains, hence the confidence intervals and repeated windows).
    """
    dispatcher = fleet.start_dispatcher(SchedulingConfig(policy="fcfs-rr"))
    burst = [replace(r, arrival_s=0.0) for r in workload[:WARM_UP_REQUESTS]]
    asyncio.run(replay(dispatcher.address, burst))
    fleet.stop_dispatcher()


CAPACITY_BURST_PER_SLOT = 4


def measure_capacity(fleet: LocalFleet, workload: Sequence[WorkloadRequest], hidden_length: bool = True) -> float:
    """Output tokens per second the fleet serves with every slot busy (`saturated_throughput`):
    a burst of the workload's requests, four per slot, sent at once through `fcfs-rr`, answers at
    their real lengths as in the replays. Its requests are not part of the results; it takes about
    10-20 s."""
    slots = fleet.spec.engines * fleet.spec.max_num_seqs
    n = CAPACITY_BURST_PER_SLOT * slots
    burst = [replace(workload[-1 - i % len(workload)], arrival_s=0.0, request_id=f"capacity-{i}") for i in range(n)]
    fleet.reset_prefix_caches()  # the replays start without cached prompts; so does this
    dispatcher = fleet.start_dispatcher(SchedulingConfig(policy="fcfs-rr"))
    try:
        outcomes = asyncio.run(replay(dispatcher.address, burst, hidden_length=hidden_length))
    finally:
        fleet.stop_dispatcher()
    return saturated_throughput(outcomes, slots)


def replay_policy(
    fleet: LocalFleet, config: SchedulingConfig, workload: Sequence[WorkloadRequest], hidden_length: bool,
    on_done: Callable[[Outcome], None] | None = None, tell_lengths: bool = False,
) -> tuple[list[Outcome], dict[str, float], float]:  # fmt: skip
    """One replay of the workload under `config` on a fresh dispatcher, from empty prefix caches:
    every request's outcome, each pod's busy seconds, and the engines' prefix-cache hit rate."""
    # Each replay starts with empty prefix caches (vLLM's development endpoint empties them):
    # otherwise every policy after the first finds the prompts it replays cached on whichever
    # engine served them before, and prefills less (bench/DATAPLANE.md, section 3).
    fleet.reset_prefix_caches()
    queries, hits = fleet.prefix_cache_counters()
    dispatcher = fleet.start_dispatcher(config)
    try:
        outcomes, busy = asyncio.run(run_policy(dispatcher.address, workload, hidden_length, on_done or (lambda _o: None), tell_lengths))
    finally:
        fleet.stop_dispatcher()
    queries_after, hits_after = fleet.prefix_cache_counters()
    looked_up = queries_after - queries
    return outcomes, busy, (hits_after - hits) / looked_up if looked_up else 0.0


def replay_summary(label: str, outcomes: Sequence[Outcome], busy: dict[str, float], hit_rate: float) -> dict[str, Any]:
    """One `results` entry for a `replay_policy` result."""
    return summarize_outcomes(label, outcomes, list(busy.values()) or [0.0]) | {"prefix_cache_hit_rate": hit_rate}


@dataclass(frozen=True)
class RateSearch:
    """What `find_queue_rate` found: the rate, every (rate, share) tried, and the `replay_policy`
    result of the try at that rate (None if the search ended on a rate it did not try)."""

    rate: float
    tried: list[tuple[float, float]]
    replay_at_rate: tuple[list[Outcome], dict[str, float], float] | None


def find_queue_rate(
    fleet: LocalFleet, spec: WorkloadSpec, target: float, hidden_length: bool = True,
    on_try: Callable[[float, float], None] | None = None,
) -> RateSearch:  # fmt: skip
    """The arrival rate at which `fcfs-rr`'s requests spend about `target` of their latency before
    the first token (`llmfleet.demo.load.next_rate`), and every (rate, share) tried. Each try is a
    whole replay of the window from `spec.rate` on, caches emptied as for the policies; none of
    them is a policy's result, but the try at the chosen rate is kept: the demo shows it beside
    fcfs-rr's own replay as the machine's drift (`EARLIER`)."""
    tried: list[tuple[float, float]] = []
    replays: dict[float, tuple[list[Outcome], dict[str, float], float]] = {}
    rate: float | None = spec.rate
    while rate is not None and len(tried) < MAX_QUEUE_REPLAYS:
        workload = build_workload(replace(spec, rate=rate))
        replays[rate] = replay_policy(fleet, SchedulingConfig(policy=BASELINE), workload, hidden_length)
        tried.append((rate, queue_share(replays[rate][0])))
        if on_try:
            on_try(*tried[-1])
        rate = next_rate(tried, target)
    chosen = tried[-1][0] if rate is None else closest_rate(tried, target)
    return RateSearch(chosen, tried, replays.get(chosen))


# When the rate search ran, its replay at the chosen rate is the baseline's earlier replay
# (`EARLIER`): the same requests under the same policy minutes before. The baseline's own replay
# then runs after every other policy, so the two bracket the comparison and their ratio is what
# the machine's drift alone did to one policy meanwhile (`llmfleet.demo.report.drift_note`). On
# this shared 2-core machine two raw demo runs gave llmfleet 1.44 and 0.40 of fcfs-rr's mean, each
# with a bootstrap interval excluding 1 (bench/DATAPLANE.md, section 4): intervals over requests
# cannot see the machine's speed moving between replays; this replica can.
def replay_order(policies: Sequence[str], bracket: bool) -> list[str]:
    """The order the policies replay in: as given, or with the baseline moved last (`bracket`:
    its earlier replay from the rate search opens the comparison)."""
    if not bracket or BASELINE not in policies:
        return list(policies)
    return [p for p in policies if p != BASELINE] + [BASELINE]


def policy_entry(label: str) -> str:
    """The `--policies` entry a results label names (`EARLIER` is the baseline's replay)."""
    return BASELINE if label == EARLIER else label


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Start the fleet, replay the workload under each policy, print and return the results."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    check_rate_options(options.load, options.queue_share)
    console = Console()
    workload = build_workload(options.workload)
    planned_tokens = sum(r.output_tokens for r in workload)
    console.print(
        f"[bold]llmfleet demo[/]: {len(workload)} requests from trace [cyan]{options.workload.trace}[/] "
        f"over {workload[-1].arrival_s:.0f}s ({planned_tokens} output tokens), "
        f"{options.fleet.engines} real vLLM engines, policies {', '.join(options.policies)}"
    )
    fleet = LocalFleet(replace(options.fleet, engine_dev_endpoints=True), options.log_dir)
    previous = signal.getsignal(signal.SIGTERM)
    # SIGTERM takes the same path as Ctrl-C (a SIGINT to ourselves, which asyncio turns into a
    # clean KeyboardInterrupt), so the fleet is always stopped.
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    results: list[dict[str, Any]] = []
    outcomes_by_policy: dict[str, list[Outcome]] = {}
    rate, capacity = options.workload.rate, 0.0
    queue_tries: list[tuple[float, float]] = []
    try:
        with console.status(f"starting {options.fleet.engines} vLLM engines and sidecars (logs in {fleet.log_dir})"):
            fleet.start()
        with console.status("warming the engines up"):
            warm_up(fleet, workload)
        if options.load is not None:
            with console.status("measuring the fleet's capacity (a burst that keeps every slot busy)"):
                capacity = measure_capacity(fleet, workload, options.hidden_length)
            rate = rate_for_load(options.load, capacity, workload)
            workload = build_workload(replace(options.workload, rate=rate))
            console.print(
                f"capacity {capacity:.0f} output tokens/s with every slot busy; load {options.load:g} of it is "
                f"{rate:.2f} requests/s"
            )
        order = list(options.policies)
        if options.queue_share is not None:

            def tried(rate: float, share: float) -> None:
                console.print(f"  fcfs-rr at {rate:.2f} requests/s: {share:.0%} of its latency before the first token")

            with console.status(f"finding the rate at which fcfs-rr queues for {options.queue_share:.0%} of its latency"):
                search = find_queue_rate(fleet, options.workload, options.queue_share, options.hidden_length, tried)
            rate, queue_tries = search.rate, search.tried
            workload = build_workload(replace(options.workload, rate=rate))
            console.print(f"replaying every policy at {rate:.2f} requests/s (the search's replays are not results)")
            if search.replay_at_rate is not None and BASELINE in options.policies:
                outcomes, busy, hit_rate = search.replay_at_rate
                outcomes_by_policy[EARLIER] = outcomes
                results.append(replay_summary(EARLIER, outcomes, busy, hit_rate))
                order = replay_order(options.policies, bracket=True)
                console.print(f"{BASELINE}'s replay at that rate is kept as {EARLIER!r}; {BASELINE} replays again after the "
                              "others, so the two bracket the comparison")  # fmt: skip
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            for policy in order:
                task = progress.add_task(f"{policy:>10}", total=len(workload))

                def advance(_outcome: Outcome, task_id: Any = task) -> None:
                    progress.advance(task_id)

                config = policy_config(policy, options.slice_tokens, options.ranker)
                outcomes, busy, hit_rate = replay_policy(fleet, config, workload, options.hidden_length, advance, is_oracle(policy))
                outcomes_by_policy[policy] = outcomes
                results.append(replay_summary(policy, outcomes, busy, hit_rate))
    finally:
        signal.signal(signal.SIGTERM, previous)
        with console.status("stopping the fleet"):
            fleet.stop()
    print_table(results, outcomes_by_policy=outcomes_by_policy)
    adjusted = None
    with console.status("taking the machine's drift out with the simulator fitted to each replay's engine speed"):
        try:
            adjusted = drift_adjusted_ratios(options, workload, outcomes_by_policy)
        except (OSError, ValueError, RuntimeError) as exc:  # an estimate beside the results: never lose them to it
            console.print(f"[yellow]could not take the machine's drift out: {exc}[/]")
    if adjusted is not None:
        console.print(adjusted_note(adjusted, BASELINE))
    payload = results_json(f"azure-{options.workload.trace} (live fleet)", options.fleet.engines, rate, results)
    if options.load is not None:
        payload["load"] = {"fraction_of_capacity": options.load, "capacity_tok_s": round(capacity, 1), "rate": round(rate, 3)}
    if options.queue_share is not None:
        payload["queue_share"] = {
            "target": options.queue_share, "rate": round(rate, 3),
            "tried": [{"rate": round(r, 3), "share": round(q, 3)} for r, q in queue_tries],
        }  # fmt: skip
    payload["ratios_vs_fcfs_rr"] = ratios = ratio_rows(results, BASELINE, outcomes_by_policy)
    payload["replay_order"] = list(outcomes_by_policy)
    if adjusted is not None:
        payload["drift_adjusted"] = adjusted
    band = drift_band(ratios)
    if band is not None:
        payload["drift"] = {"band": round(band, 3), "beyond": {p: beyond_drift(ratios, p) for p in ratios if p not in (BASELINE, EARLIER)}}
    if options.out_dir:
        path = write_results(options.out_dir, payload)
        plot(outcomes_by_policy, results, options.out_dir / "latency.png", "llmfleet demo on real vLLM-CPU")
        requests = options.out_dir / "requests.jsonl"
        requests.unlink(missing_ok=True)
        for replay_index, (label, outcomes) in enumerate(outcomes_by_policy.items()):  # in the order they ran
            append_records(requests, outcome_records(outcomes, replay=replay_index, variant=policy_entry(label), label=label,
                                                     rate=round(rate, 3), start_index=options.workload.start_index))  # fmt: skip
        console.print(f"wrote {path}, {options.out_dir / 'latency.png'} and every request's outcome in {requests}")
    return {"payload": payload, "results": results, "outcomes": outcomes_by_policy}
