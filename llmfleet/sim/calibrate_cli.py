"""`llmfleet sim calibrate`: fit the simulator's cost model to live engines, or to a live fleet.

    llmfleet sim calibrate --engine http://127.0.0.1:8000 --out cost.json
    llmfleet sim calibrate --engine http://127.0.0.1:8000 --engine http://127.0.0.1:8001 \\
        --fleet 127.0.0.1:50051 --fleet-metrics http://127.0.0.1:9090 --out fleet-cost.json

The first form probes a quiet engine (`llmfleet.sim.calibrate`). The second also replays a
window of a trace through the fleet's dispatcher and fits what the probes cannot see: how much
slower the engines run under traffic, and the data plane's delays
(`llmfleet.sim.fleet_calibrate`). `llmfleet fleet up` prints the second command for its fleet.
"""

from __future__ import annotations

import argparse
import sys

from llmfleet.sim.cli_args import ints, positive_float, positive_int
from llmfleet.sim.costmodel import SIMULATED_ENGINE


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "calibrate",
        help="fit a cost model to live vLLM servers, or to a live fleet (--fleet)",
        description="Time prefill (max_tokens=1 at several prompt lengths) and decode (concurrent requests) "
        "against a vLLM OpenAI-compatible server and fit the simulator's cost model. With --fleet, also replay a "
        "window of a trace through a running fleet's dispatcher (exact lengths; nothing else may use the fleet "
        "meanwhile), read the engines' and the dispatcher's Prometheus histograms around it, and fit how many "
        "times slower the engines decoded and prefilled than the probed model says, plus the data plane's delays. The dispatcher "
        "must run each request as one engine request (a policy that neither slices nor preempts).",
        allow_abbrev=False,
    )
    p.add_argument(
        "--engine",
        action="append",
        default=[],
        metavar="URL",
        help="base URL of a vLLM server, e.g. http://127.0.0.1:8000; repeat for each engine of a fleet. The first "
        "is probed; with --fleet every one is read for its metrics",
    )
    p.add_argument("--out", required=True, help="cost model JSON to write")
    probes = p.add_argument_group("probes")
    probes.add_argument("--prompt-lengths", type=ints, default=[16, 64, 256, 1024], help="prefill probe lengths")
    probes.add_argument("--concurrency", type=ints, default=[1, 4, 16], help="decode probe batch sizes")
    probes.add_argument("--decode-tokens", type=positive_int, default=32, help="tokens per decode probe")
    probes.add_argument("--repeats", type=positive_int, default=3, help="repeats per probe (median taken)")
    probes.add_argument("--kv-tokens", type=positive_int, default=None, help="KV capacity to record (tokens)")
    fleet = p.add_argument_group("a live fleet")
    fleet.add_argument("--fleet", default=None, metavar="HOST:PORT", help="the fleet's dispatcher (gRPC)")
    fleet.add_argument(
        "--fleet-metrics", default=None, metavar="URL", help="the dispatcher's Prometheus endpoint, e.g. http://127.0.0.1:9090"
    )
    fleet.add_argument(
        "--engine-metrics",
        action="append",
        default=[],
        metavar="URL",
        help="where an engine's vLLM metrics are served (default: each --engine); repeat for each engine",
    )
    fleet.add_argument(
        "--cost-model",
        default=None,
        help=f"start from this model instead of probing: a JSON file from `llmfleet sim calibrate`, a profile, or "
        f"{SIMULATED_ENGINE} (the simulated engine's timing, for `llmfleet fleet up --engine simulated`)",
    )
    fleet.add_argument("--trace", default="conv", help="trace whose window is replayed: conv, code, mooncake or a path")
    fleet.add_argument("--start-index", type=int, default=1000, help="first trace request of the window (default 1000)")
    fleet.add_argument("--requests", type=positive_int, default=150, help="requests in the window (default 150)")
    fleet.add_argument("--rate", type=positive_float, default=2.0, help="mean arrival rate, requests/s (default 2.0)")
    fleet.add_argument(
        "--token-budget", type=positive_int, default=2048, help="the engines' max_num_batched_tokens (default 2048)"
    )
    p.set_defaults(func=cmd_calibrate)


def _check(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of flags, in one line (None: nothing)."""
    if args.fleet is None:
        stray = [f for f, v in (("--fleet-metrics", args.fleet_metrics), ("--engine-metrics", args.engine_metrics),
                                ("--cost-model", args.cost_model)) if v]  # fmt: skip
        if stray:
            return f"{', '.join(stray)} only apply with --fleet"
        if len(args.engine) != 1:
            return "give one --engine to probe (several engines only with --fleet)"
        return None
    if not args.fleet_metrics:
        return "--fleet needs --fleet-metrics, the dispatcher's Prometheus endpoint"
    if bool(args.engine) == bool(args.cost_model):
        return "--fleet needs either --engine (probed) or --cost-model (not probed), not both"
    if not (args.engine_metrics or args.engine):
        return "--fleet needs the engines' metrics: --engine-metrics URL for each engine"
    return None


def cmd_calibrate(args: argparse.Namespace) -> int:
    import asyncio

    from llmfleet.sim.calibrate import calibrate_engine

    problem = _check(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.engine:
        url = args.engine[0]
        try:
            model = asyncio.run(
                calibrate_engine(url, args.prompt_lengths, args.concurrency, args.decode_tokens, args.repeats, args.kv_tokens)
            )
        except Exception as exc:  # every engine failure becomes one readable line
            print(f"error: calibration against {url} failed: {exc}", file=sys.stderr)
            return 2
        print(
            f"probed {url}: decode {model.decode_base_s * 1000:.2f} ms + {model.decode_per_seq_s * 1000:.3f} ms/seq, "
            f"prefill knots {list(zip(model.prefill_knots_tokens, [round(t, 4) for t in model.prefill_knots_s], strict=True))}",
            flush=True,
        )
    else:
        from llmfleet.sim.costmodel import load_cost_model

        try:
            model = load_cost_model(args.cost_model)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.fleet:
        try:
            model = _calibrate_on_fleet(args, model)
        except Exception as exc:  # a fleet, a trace or a window that cannot calibrate: one line
            print(f"error: calibration on the fleet at {args.fleet} failed: {exc}", file=sys.stderr)
            return 2
    model.save(args.out)
    print(f"wrote {args.out}")
    return 0


def _calibrate_on_fleet(args: argparse.Namespace, probed):  # type: ignore[no-untyped-def]
    import asyncio

    from llmfleet.client import DispatcherClient
    from llmfleet.core.config import SchedulingConfig
    from llmfleet.demo.workload import WorkloadSpec, build_workload
    from llmfleet.sim.fleet_calibrate import calibrate_on_fleet, measure_window
    from llmfleet.sim.instance import EngineConfig
    from llmfleet.sim.simulator import SimConfig
    from llmfleet.sim.traces import TraceRequest

    async def stats():  # type: ignore[no-untyped-def]
        async with DispatcherClient(args.fleet) as client:
            return await client.stats()

    s = asyncio.run(stats())
    pods = [p for p in s.pods if p.healthy]
    if not pods:
        raise RuntimeError("the dispatcher has no healthy pod")
    slots = max(p.max_num_seqs for p in pods)
    if slots < 1:
        raise RuntimeError("the pods did not report their max_num_seqs yet; try again in a few seconds")
    engine_urls = [u.rstrip("/") for u in (args.engine_metrics or args.engine)]
    workload = build_workload(WorkloadSpec(trace=args.trace, start_index=args.start_index, count=args.requests, rate=args.rate))
    span = workload[-1].arrival_s
    print(
        f"replaying {len(workload)} requests of {args.trace} (from {args.start_index}) over {span:.0f} s through "
        f"{args.fleet}: {len(pods)} pods of {slots} slots, policy {s.policy}",
        flush=True,
    )
    window = asyncio.run(measure_window(args.fleet, engine_urls, args.fleet_metrics.rstrip("/"), workload))
    trace = [TraceRequest(r.request_id, r.arrival_s, len(r.prompt_token_ids), r.output_tokens) for r in workload]
    cfg = SimConfig(instances=len(pods), engine=EngineConfig(max_running=slots, token_budget=args.token_budget))
    config = SchedulingConfig(policy=s.policy, slice_tokens=s.slice_tokens or None)
    source = (
        f"{probed.source or probed.name}; on the fleet at {args.fleet} ({s.policy}): {args.trace} from {args.start_index}, "
        f"{args.requests} requests at {args.rate:g}/s"
    )
    fitted = calibrate_on_fleet(probed, window, trace, cfg, config, source)
    t = window.terms
    print(
        f"the engines decoded at {fitted.slowdown:.2f}x the starting model's time (arrival to the engine's last token "
        f"{window.engine_latency_s:.3f} s, of which held at the dispatcher {window.dispatcher_means['llmfleet_dispatcher_queue_seconds']:.3f} s) "
        f"and prefilled at {fitted.prefill_slowdown or fitted.slowdown:.2f}x (first batch to first token {window.engine_prefill_s * 1000:.0f} ms); "
        f"data plane: dispatch {t.dispatch_delay_s * 1000:.0f} ms, first token back {t.first_token_relay_s * 1000:.0f} ms, "
        f"last token back {t.finish_relay_s * 1000:.0f} ms, end notice {t.end_notice_s * 1000:.0f} ms; "
        f"clients saw TTFT {window.client_ttft_s:.3f} s, latency {window.client_e2e_s:.3f} s"
    )
    speeds = fitted.sim_config.instance_speeds
    if speeds is not None:
        each = ", ".join(f"{url} {speed:.2f}" for url, speed in zip(engine_urls, speeds, strict=True))
        print(
            f"each engine's time per token, relative to their average: {each}; simulate this fleet with "
            f"--instances {len(speeds)} --instance-speeds {','.join(f'{x:.2f}' for x in speeds)}"
        )
    else:
        print(f"{len(engine_urls)} engines' metrics for {len(pods)} pods: every simulated engine runs at one speed")
    return fitted.model
