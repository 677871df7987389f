"""`llmfleet fleet up`: a local fleet that stays up until Ctrl-C.

    llmfleet fleet up --engine simulated --engines 4          # seconds to start; for local work and tests
    llmfleet fleet up --engine vllm --engines 2               # real vLLM (the tiny model on CPU), ~40 s

N engines (real vLLM servers, or the simulated engine inside each sidecar, like llm-d's
inference simulator), one sidecar each and a dispatcher, every one a child process started with
the same `llmfleet` commands a pod runs. It prints the dispatcher's address and how to call it,
keeps every part's log in one folder, and stops them all on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmfleet.fleet.local import FleetSpec


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def register(parser: argparse.ArgumentParser) -> None:
    from llmfleet.fleet.local import FleetSpec  # for its defaults

    sub = parser.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND", title="subcommands")
    p = sub.add_parser(
        "up",
        help="start engines, sidecars and a dispatcher here; stop them all on Ctrl-C",
        description="Start a local fleet and keep it up until Ctrl-C or SIGTERM. It prints the dispatcher's "
        "address and a `llmfleet client` command to try it.",
    )
    p.add_argument(
        "--engine",
        choices=("vllm", "simulated"),
        default="vllm",
        help="vllm: real vLLM servers (default; the tiny model unless --model); simulated: the simulated engine "
        "inside each sidecar, which starts in a second",
    )
    p.add_argument("--engines", type=_positive, default=2, help="how many engines (default 2)")
    p.add_argument("--max-num-seqs", type=_positive, default=8, help="each engine's max_num_seqs (default 8)")
    p.add_argument("--max-model-len", type=_positive, default=2048, help="vLLM --max-model-len (default 2048)")
    p.add_argument("--model", default=None, help="model folder or name for vLLM (default: the tiny model)")
    p.add_argument("--config", default=None, help="scheduling config YAML (a CRD scheduling block)")
    p.add_argument("--policy", default=None, help="scheduling policy, overriding the config's")
    p.add_argument("--slice-tokens", type=_positive, default=None, help="slice length S, overriding the config's")
    p.add_argument("--port", type=int, default=0, help="dispatcher port (default: a free one)")
    p.add_argument("--openai-port", type=int, default=0, help="port of the OpenAI-compatible API (default: a free one)")
    p.add_argument("--metrics-port", type=int, default=0, help="dispatcher's Prometheus port (default: a free one)")
    p.add_argument("--log-dir", default=None, help="folder for every part's log (default: a new temporary one)")
    p.add_argument(
        "--engine-nice",
        type=int,
        choices=range(0, 20),
        metavar="0-19",
        default=FleetSpec.engine_nice,
        help="CPU niceness of the engines' compute processes, so that on shared cores the sidecars, the dispatcher "
        "and vLLM's HTTP front do not wait behind them (shorter delays at moderate load; measured worse for "
        f"llmfleet past the engines' capacity); default {FleetSpec.engine_nice}: as started",
    )
    add_unconfined_engines(p)
    p.set_defaults(func=cmd_up)


def add_unconfined_engines(parser: argparse.ArgumentParser) -> None:
    """The `--unconfined-engines` flag of every command that starts a local fleet (it sets
    `FleetSpec.confine_engines` to False)."""
    parser.add_argument(
        "--unconfined-engines",
        action="store_true",
        help="bind only each engine's OpenMP threads to its cores and let the rest of it (HTTP front, EngineCore) "
        "run on any core; by default each engine's whole process stays on its own cores, as a pod's would "
        "(unconfined, engines sharing a host's cores were measured running 1.2-4x apart in speed)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def fleet_spec(args: argparse.Namespace) -> FleetSpec:
    """The fleet `fleet up` starts, from its flags."""
    from llmfleet.fleet.local import FleetSpec

    return FleetSpec(
        engines=args.engines,
        engine=args.engine,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        model=args.model,
        engine_nice=args.engine_nice,
        confine_engines=not args.unconfined_engines,
    )


def wait_for_stop(stopping: list[int]) -> int:
    """Block until SIGINT or SIGTERM and return it (at once if one was noted in `stopping`).

    The signals are masked and taken with sigwait, so no Python handler runs while this thread
    waits; they stay masked afterwards, so a second Ctrl-C cannot cut the shutdown short."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if stopping:
        return stopping[0]
    return signal.sigwait(STOP_SIGNALS)


def cmd_up(args: argparse.Namespace) -> int:
    import sys

    from llmfleet.core.config import SchedulingConfig
    from llmfleet.engine.process import free_port
    from llmfleet.fleet.local import LocalFleet
    from llmfleet.sim.costmodel import SIMULATED_ENGINE

    try:
        config = SchedulingConfig.load(args.config) if args.config else SchedulingConfig()
        config = config.with_changes(policy=args.policy, slice_tokens=args.slice_tokens)
    except (OSError, ValueError) as exc:
        print(f"error: bad scheduling config: {exc}", file=sys.stderr)
        return 2
    spec = fleet_spec(args)
    # While the fleet starts, a signal is only noted: a handler must take no lock. (It used to
    # set a threading.Event, and a signal landing while the main thread held that Event's lock
    # inside Event.wait deadlocked the fleet for good.)
    stopping: list[int] = []
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    fleet = LocalFleet(spec, args.log_dir)
    try:
        print(f"starting {args.engines} {args.engine} engine(s); logs in {fleet.log_dir}", flush=True)
        fleet.start()
        if stopping:
            return 130
        openai_port = args.openai_port or free_port()
        metrics_port = args.metrics_port or free_port()
        dispatcher = fleet.start_dispatcher(config, port=args.port or None, openai_port=openai_port, metrics_port=metrics_port)
        metrics_url = f"http://127.0.0.1:{metrics_port}"
        engines = fleet.engine_metrics_urls
        # vLLM servers are probed; the simulated engine is no HTTP server, so the calibration
        # starts from its configured timing instead.
        probe = " ".join(f"--engine {u}" for u in engines) if args.engine == "vllm" else (
            " ".join(f"--engine-metrics {u}" for u in engines) + f" --cost-model {SIMULATED_ENGINE}"
        )
        print(
            f"llmfleet fleet is up: {args.engines} {args.engine} engine(s), policy {config.policy}\n"
            f"  dispatcher: {dispatcher.address}   (gRPC llmfleet.v1.Dispatcher; health and reflection on)\n"
            f"  try:        llmfleet client --target {dispatcher.address} generate \"Hello, fleet\" --max-tokens 32\n"
            f"  stats:      llmfleet client --target {dispatcher.address} stats\n"
            f"  OpenAI:     http://127.0.0.1:{openai_port}/v1   (e.g. OpenAI(base_url=..., api_key=\"none\"))\n"
            f"  metrics:    {metrics_url}/metrics   (engines' vLLM metrics: {', '.join(u + '/metrics' for u in engines)})\n"
            f"  calibrate:  llmfleet sim calibrate --fleet {dispatcher.address} --fleet-metrics {metrics_url} {probe} --out fleet-cost.json\n"
            f"  logs:       {fleet.log_dir}\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        wait_for_stop(stopping)
        print("stopping the fleet", flush=True)
    except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
        print(f"error: the fleet could not start: {exc} (logs in {fleet.log_dir})", file=sys.stderr)
        return 1
    finally:
        fleet.stop()
    return 0
