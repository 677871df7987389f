"""Dispatcher capacity against many simulated engines: decisions per second and concurrent streams.

Layout (three processes, as in a cluster): K sidecars, each in front of a simulated vLLM engine
(`llmfleet.engine.simulated`: slots, priority, per-step timing), share one process; the
dispatcher runs as `llmfleet dispatcher` in its own process; this process is the client.

* Streams: N clients open Generate streams at once and hold them while the engines produce
  tokens slowly; every stream must end with exactly its tokens and no error. The dispatcher's
  peak resident memory (VmHWM) is read from /proc.
* Decisions: a burst of short requests; decisions per second is the number of slice
  assignments the dispatcher made (its `llmfleet_dispatcher_slice_seconds` count) divided by
  the wall time of the burst, and the `decide()` calls per second are reported beside it. The
  CPU time each process used during the burst says which one binds; with `--pin` the dispatcher
  has a core to itself, and its assignments per second of its own CPU time is what one
  dispatcher core sustains.
* The floor: the same requests through a bare relay (`serve_relay`: two gRPC hops and nothing
  else) on the dispatcher's core. The burst is cut into `--pairs` parts, each run through the
  dispatcher and the relay back to back in alternating order, and the per-pair ratio of their
  CPU per request is reported (`side_by_side`): this machine's speed drifts by 2x within
  minutes, so numbers from runs apart do not compare.

Reproduce (writes bench/results/dispatcher_capacity.json):
    .venv/bin/python bench/dispatcher_capacity.py --pin --streams 10000 --engines 40 --burst 20000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import httpx

from llmfleet.core.config import SchedulingConfig
from llmfleet.engine.process import free_port
from llmfleet.fleet.local import LlmfleetProcess

RESULTS = Path(__file__).resolve().parent / "results"


# --- the sidecar host process -------------------------------------------------------------------
async def host_sidecars(count: int, max_num_seqs: int, step_s: float, ports_file: Path) -> None:
    from llmfleet.engine.simulated import SimulatedEngineClient, SimulatedEngineConfig
    from llmfleet.sidecar import serve_sidecar

    handles = []
    for i in range(count):
        engine = SimulatedEngineClient(
            SimulatedEngineConfig(max_num_seqs=max_num_seqs, step_base_s=step_s, step_per_seq_s=0.0, name=f"sim-{i}")
        )
        handles.append(await serve_sidecar(engine, max_num_seqs=max_num_seqs, load_interval_s=1.0))
    ports_file.write_text(",".join(h.address for h in handles))
    await asyncio.Event().wait()


# --- the floor: two gRPC hops and nothing else ------------------------------------------------------
async def serve_relay(pods: list[str], port_file: Path) -> None:
    """Generate relayed to the sidecars over the same Slices calls the dispatcher uses, round
    robin, with none of the dispatcher's own work (no queue, policy, accounting, metrics or
    checks): what the two gRPC hops alone cost a Python process per request."""
    import itertools

    from llmfleet.dispatcher.slice_stream import SliceStream, SliceTokens
    from llmfleet.v1 import dispatcher_pb2, dispatcher_pb2_grpc, sidecar_pb2, sidecar_pb2_grpc

    stubs = [sidecar_pb2_grpc.SidecarStub(grpc.aio.insecure_channel(a)) for a in pods]
    streams = [SliceStream(f"p{i}", stub.Slices) for i, stub in enumerate(stubs)]
    count = itertools.count()

    class Relay(dispatcher_pb2_grpc.DispatcherServicer):
        async def Generate(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
            i = next(count)
            item = sidecar_pb2.SliceItem(
                request_id=str(i), prompt_token_ids=request.token_ids.ids, max_tokens=request.max_tokens, ignore_eos=True
            )
            ids: list[int] = []
            async for event in streams[i % len(streams)].run(item):
                if isinstance(event, SliceTokens):
                    ids.extend(event.token_ids)
            yield dispatcher_pb2.GenerateResponse(request_id=str(i), token_ids=ids, finish_reason="length")

    from llmfleet.serving import SERVER_OPTIONS

    server = grpc.aio.server(options=SERVER_OPTIONS)  # as the dispatcher's
    dispatcher_pb2_grpc.add_DispatcherServicer_to_server(Relay(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


# --- the policy alone ---------------------------------------------------------------------------
def policy_decisions_per_s(policy_name: str, queued: int, pods: int, repeats: int = 50) -> dict[str, float]:
    """Assignments per second of `decide()` alone, on a view with `queued` waiting requests and
    `pods` pods with 8 free slots each: the scheduler's own cost, without gRPC or engines."""
    import random

    from llmfleet.core.prediction import LengthEstimate
    from llmfleet.core.scheduling import PodState, RequestState, SchedulerView
    from llmfleet.policies.registry import make_policy

    rng = random.Random(0)
    queue = tuple(
        RequestState(
            request_id=f"r{i}", seq=i, arrival_s=i * 0.001, prompt_tokens=rng.randint(16, 1024),
            estimate=LengthEstimate(score=(e := rng.uniform(10, 800)), expected_tokens=e, upper_tokens=2 * e),
            enqueued_s=i * 0.001,
        )
        for i in range(queued)
    )
    pod_states = tuple(
        PodState(pod_id=f"p{j}", kv_capacity_tokens=500_000, max_running=256, running=248) for j in range(pods)
    )
    view = SchedulerView(now=queued * 0.001, queue=queue, running=(), pods=pod_states)
    policy = make_policy(policy_name)
    assigned = 0
    t = time.perf_counter()
    for _ in range(repeats):
        assigned += len(policy.decide(view))
    wall = time.perf_counter() - t
    return {"decide_calls_per_s": repeats / wall, "assignments_per_s": assigned / wall, "assignments_per_call": assigned / repeats}


# --- measurements --------------------------------------------------------------------------------
def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` and its children so far."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for one in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = one.cpu_times()
            total += t.user + t.system
    return total


def metric(metrics_url: str, name: str) -> float:
    text = httpx.get(metrics_url, timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def hold_streams(address: str, n: int, tokens: int, prompt_tokens: int, in_flight: int = 0) -> dict[str, object]:
    """`n` Generate calls, all at once or at most `in_flight` at a time."""
    from llmfleet.v1 import dispatcher_pb2, dispatcher_pb2_grpc

    errors: dict[str, int] = {}
    wrong = 0
    peak_open = 0
    open_now = 0
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_concurrent_streams", 0)]) as channel:
        stub = dispatcher_pb2_grpc.DispatcherStub(channel)

        gate = asyncio.Semaphore(in_flight or n)

        async def one(i: int) -> None:
            async with gate:
                await one_call(i)

        async def one_call(i: int) -> None:
            nonlocal wrong, peak_open, open_now
            open_now += 1
            peak_open = max(peak_open, open_now)
            got = 0
            try:
                req = dispatcher_pb2.GenerateRequest(
                    token_ids=dispatcher_pb2.TokenIds(ids=[4 + (i + j) % 4000 for j in range(prompt_tokens)]),
                    max_tokens=tokens,
                    ignore_eos=True,
                )
                async for msg in stub.Generate(req, timeout=900):
                    got += len(msg.token_ids)
                if got != tokens:
                    wrong += 1
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
            finally:
                open_now -= 1

        t = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.monotonic() - t
    return {"streams": n, "errors": errors, "wrong_token_counts": wrong, "peak_open": peak_open, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--streams", type=int, default=10000)
    ap.add_argument("--engines", type=int, default=40)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--stream-tokens", type=int, default=8, help="tokens per held stream")
    ap.add_argument("--step-s", type=float, default=2.0, help="simulated decode step time while holding streams")
    ap.add_argument("--burst", type=int, default=20000, help="short requests in the decision burst")
    ap.add_argument(
        "--in-flight", type=int, default=0, help="burst requests open at a time (default: all at once)",
    )
    ap.add_argument(
        "--pairs", type=int, default=4,
        help="the burst is split into this many parts, each beside the same part through the bare relay",
    )
    ap.add_argument("--policy", default="llmfleet")
    ap.add_argument(
        "--pin", action="store_true",
        help="the dispatcher alone on the last core, the client and the sidecars on the others",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--serve-sidecars", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--ports-file", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--serve-relay", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.pairs < 1 or args.burst < args.pairs:
        ap.error(f"--pairs must be at least 1 and at most --burst ({args.burst}); got {args.pairs}")
    if args.serve_relay:
        from llmfleet.core.eventloop import run_server

        run_server(lambda: serve_relay(args.serve_relay.split(","), args.ports_file))  # on the dispatcher's loop
        return 0
    if args.serve_sidecars:
        asyncio.run(host_sidecars(args.serve_sidecars, args.max_num_seqs, args.step_s, args.ports_file))
        return 0
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "llmfleet-capacity"
    log_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {"setup": {k: str(v) for k, v in vars(args).items() if k not in ("serve_sidecars", "ports_file")}}
    procs: list[LlmfleetProcess] = []
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin:
        if len(cpus) < 2:
            raise SystemExit("--pin needs at least 2 cores")
        os.sched_setaffinity(0, cpus[:-1])  # inherited by the sidecar host started below
    try:
        for phase, step_s in (("streams", args.step_s), ("decisions", 0.001)):
            ports_file = log_dir / f"ports-{phase}"
            ports_file.unlink(missing_ok=True)
            host = BenchScript(
                f"sidecars-{phase}",
                [__file__, "--serve-sidecars", str(args.engines), "--ports-file", str(ports_file),
                 "--max-num-seqs", str(args.max_num_seqs), "--step-s", str(step_s)],
                log_dir / f"sidecars-{phase}.log",
            )
            procs.append(host)
            host.start()
            host.wait_until(ports_file.exists, 120, "serving its sidecars")
            port, metrics_port = free_port(), free_port()
            config_path = log_dir / "scheduling.yaml"
            config_path.write_text(SchedulingConfig(policy=args.policy, max_queue=max(args.streams, args.burst) * 2).to_yaml())
            dispatcher = LlmfleetProcess(
                "dispatcher",
                ["dispatcher", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
                 "--config", str(config_path), "--discovery", "static", "--pods", ports_file.read_text()],
                port,
                log_dir / f"dispatcher-{phase}.log",
            )
            procs.append(dispatcher)
            if args.pin:
                os.sched_setaffinity(0, cpus[-1:])  # the dispatcher inherits its own core
            dispatcher.start()
            if args.pin:
                os.sched_setaffinity(0, cpus[:-1])
            dispatcher.wait_serving(120)
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            assert dispatcher.pid is not None
            if phase == "streams":
                held = asyncio.run(hold_streams(dispatcher.address, args.streams, args.stream_tokens, 16))
                held["dispatcher_peak_rss_mib"] = vm_hwm_mib(dispatcher.pid)
                report["streams"] = held
            else:
                report.update(decisions_and_floor(args, dispatcher, metrics_url, ports_file.read_text(), log_dir, cpus, host))
            dispatcher.stop()
            host.stop()
    finally:
        for p in procs:
            p.stop()
    report["policy_alone"] = policy_decisions_per_s(args.policy, queued=1000, pods=args.engines)
    report["targets"] = {"assignments_per_s_min": 2000, "concurrent_streams_min": 10000}
    report["command"] = "python bench/dispatcher_capacity.py " + " ".join(argv or sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dispatcher_capacity.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def dispatcher_burst(args: argparse.Namespace, n: int, dispatcher: LlmfleetProcess, metrics_url: str, host: LlmfleetProcess) -> dict[str, Any]:
    """`n` one-token requests through the dispatcher: assignments, rounds and each process's CPU."""
    assert dispatcher.pid is not None and host.pid is not None
    slices0 = metric(metrics_url, "llmfleet_dispatcher_slice_seconds_count")
    decides0 = metric(metrics_url, "llmfleet_dispatcher_decision_seconds_count")
    cpu0 = {"dispatcher": cpu_seconds(dispatcher.pid), "sidecars": cpu_seconds(host.pid), "client": _own_cpu_s()}
    burst: dict[str, Any] = asyncio.run(hold_streams(dispatcher.address, n, 1, 8, args.in_flight))
    cpu1 = {"dispatcher": cpu_seconds(dispatcher.pid), "sidecars": cpu_seconds(host.pid), "client": _own_cpu_s()}
    # Which process the 2 cores went to: if the dispatcher is not near a full core, it is not
    # what binds the end-to-end rate.
    burst["cpu_s"] = {k: cpu1[k] - cpu0[k] for k in cpu0}
    burst["assignments"] = metric(metrics_url, "llmfleet_dispatcher_slice_seconds_count") - slices0
    burst["decide_calls"] = metric(metrics_url, "llmfleet_dispatcher_decision_seconds_count") - decides0
    return burst


def relay_burst(args: argparse.Namespace, n: int, relay: LlmfleetProcess, address: str) -> dict[str, Any]:
    """The same burst through the bare relay: the floor set by Python gRPC alone."""
    assert relay.pid is not None
    cpu0 = cpu_seconds(relay.pid)
    burst: dict[str, Any] = asyncio.run(hold_streams(address, n, 1, 8, args.in_flight))
    burst["relay_cpu_s"] = cpu_seconds(relay.pid) - cpu0
    return burst


def decisions_and_floor(
    args: argparse.Namespace, dispatcher: LlmfleetProcess, metrics_url: str, pods: str, log_dir: Path,
    cpus: list[int], host: LlmfleetProcess,
) -> dict[str, object]:
    """The decision burst, split into `--pairs` parts, each measured beside the same part through
    the bare relay (`serve_relay`, on the dispatcher's core), in alternating order. This machine's
    speed drifts by 2x within minutes, so only the per-pair ratio is compared, never runs apart."""
    port_file = log_dir / "relay-port"
    port_file.unlink(missing_ok=True)
    relay = BenchScript("relay", [__file__, "--serve-relay", pods, "--ports-file", str(port_file)], log_dir / "relay.log")
    if args.pin:
        os.sched_setaffinity(0, cpus[-1:])
    relay.start()
    if args.pin:
        os.sched_setaffinity(0, cpus[:-1])
    n = args.burst // args.pairs
    bursts: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    try:
        relay.wait_until(lambda: port_file.exists() and port_file.read_text() != "", 60, "serving")
        address = f"127.0.0.1:{port_file.read_text()}"
        for i in range(args.pairs):
            if i % 2 == 0:
                bursts.append(dispatcher_burst(args, n, dispatcher, metrics_url, host))
                floors.append(relay_burst(args, n, relay, address))
            else:
                floors.append(relay_burst(args, n, relay, address))
                bursts.append(dispatcher_burst(args, n, dispatcher, metrics_url, host))
    finally:
        relay.stop()
    assert dispatcher.pid is not None
    wall = sum(b["wall_s"] for b in bursts)
    cpu = {k: sum(b["cpu_s"][k] for b in bursts) for k in bursts[0]["cpu_s"]}
    assignments = sum(b["assignments"] for b in bursts)
    decisions = {
        "streams": n * args.pairs,
        "errors": _merged(b["errors"] for b in bursts),
        "wrong_token_counts": sum(b["wrong_token_counts"] for b in bursts),
        "wall_s": wall,
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "assignments_per_s": assignments / wall,
        "dispatcher_cpu_ms_per_assignment": 1000 * cpu["dispatcher"] / max(1.0, assignments),
        "decide_calls_per_assignment": sum(b["decide_calls"] for b in bursts) / max(1.0, assignments),
        "dispatcher_core_busy": cpu["dispatcher"] / wall,
        # The dispatcher's capacity: assignments per second of its own CPU time. Pinned alone on a
        # core, it is what one dispatcher core sustains when the client and engines do not bind.
        "assignments_per_dispatcher_cpu_s": assignments / max(1e-9, cpu["dispatcher"]),
        "dispatcher_peak_rss_mib": vm_hwm_mib(dispatcher.pid),
    }
    relay_cpu = sum(f["relay_cpu_s"] for f in floors)
    floor = {
        "streams": n * args.pairs,
        "errors": _merged(f["errors"] for f in floors),
        "wrong_token_counts": sum(f["wrong_token_counts"] for f in floors),
        "wall_s": sum(f["wall_s"] for f in floors),
        "relay_cpu_s": round(relay_cpu, 2),
        "relay_cpu_ms_per_request": 1000 * relay_cpu / (n * args.pairs),
        "requests_per_relay_cpu_s": n * args.pairs / max(1e-9, relay_cpu),
    }
    pairs = [
        {
            "dispatcher_cpu_ms_per_assignment": 1000 * b["cpu_s"]["dispatcher"] / max(1.0, b["assignments"]),
            "relay_cpu_ms_per_request": 1000 * f["relay_cpu_s"] / n,
        }
        for b, f in zip(bursts, floors, strict=True)
    ]
    for p in pairs:
        p["ratio"] = p["dispatcher_cpu_ms_per_assignment"] / p["relay_cpu_ms_per_request"]
        p["own_work_ms"] = p["dispatcher_cpu_ms_per_assignment"] - p["relay_cpu_ms_per_request"]
    ratios = sorted(p["ratio"] for p in pairs)
    own = sorted(p["own_work_ms"] for p in pairs)
    summary = {
        "pairs": len(pairs),
        "dispatcher_over_relay_cpu_median": statistics.median(ratios),
        "dispatcher_over_relay_cpu_range": [ratios[0], ratios[-1]],
        "own_work_ms_median": statistics.median(own),
        "own_work_ms_range": [own[0], own[-1]],
    }
    return {"decisions": decisions, "relay_floor": floor, "pairs": pairs, "side_by_side": summary}


def _merged(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
    return dict(sum((collections.Counter(d) for d in dicts), collections.Counter()))


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class BenchScript(LlmfleetProcess):
    """This script itself, in a child process (the sidecar host, the bare relay; the overhead
    bench starts the relay through it too)."""

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, *self.args], {}

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        super().__init__(name, args, 0, log_path)


if __name__ == "__main__":
    sys.exit(main())
