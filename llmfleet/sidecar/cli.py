"""`llmfleet sidecar`: serve the sidecar next to a vLLM engine, or ask a running one to drain.

    llmfleet sidecar --port 50061 --engine-url http://127.0.0.1:8000 --metrics-port 9091 --group NAME
    llmfleet sidecar drain --port 50061        # the pod's preStop hook
"""

from __future__ import annotations

import argparse
from typing import Any

from llmfleet.core.eventloop import EVENT_LOOPS, run_server


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the llmfleet sidecar: it executes slices the dispatcher sends on the local vLLM engine "
        "(exact continuation: prompt ids + generated ids, max_tokens = slice length), streams load "
        "reports, and drains on SIGTERM without dropping slices. Serves gRPC health and reflection."
    )
    parser.add_argument("--port", type=int, default=50061, help="gRPC port (default 50061)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind, metrics included (default 127.0.0.1; '[::]' for all interfaces, as in a pod)")  # fmt: skip
    parser.add_argument(
        "--engine",
        choices=("vllm", "simulated"),
        default="vllm",
        help="vllm: the vLLM server at --engine-url (default); simulated: an in-process simulated engine "
        "(deterministic tokens, a step time that grows with the batch), for local work and tests",
    )
    parser.add_argument("--engine-url", default="http://127.0.0.1:8000", help="the local vLLM server")
    parser.add_argument(
        "--event-loop", choices=EVENT_LOOPS, default="uvloop",
        help="the asyncio event loop to serve on (uvloop: less CPU per slice)",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="the model's tokenizer (a folder or Hugging Face id) for the text of sliced requests;"
        " default: the model the engine loaded, as /v1/models names it",
    )
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (off if unset)")
    parser.add_argument("--group", default="", help="length group this pod belongs to (L4 policy)")
    parser.add_argument("--max-num-seqs", type=int, default=None, help="the engine's --max-num-seqs (default 256)")
    parser.add_argument("--load-interval", type=float, default=0.25, help="seconds between engine metric scrapes")
    parser.add_argument("--drain-timeout", type=float, default=25.0, help="seconds to drain on SIGTERM before handing slices back")
    parser.add_argument("--tls-cert", default=None, help="serve TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", default=None, help="private key for --tls-cert (PEM)")
    parser.add_argument("--health-port", type=int, default=None,
                        help="also serve the gRPC health service, plaintext and alone, on this port (for Kubernetes"
                        " probes when the API uses TLS)")  # fmt: skip
    parser.add_argument("--auth-token-file", default=None,
                        help="require 'authorization: Bearer <token in file>' on every Sidecar call (the dispatcher's"
                        " --sidecar-token-file); health and reflection stay open")  # fmt: skip
    parser.set_defaults(func=_serve)
    sub = parser.add_subparsers(dest="sidecar_command", metavar="SUBCOMMAND")
    drain = sub.add_parser("drain", help="Ask a running sidecar to drain (preStop hook); waits until it has.")
    drain.add_argument("--port", type=int, default=50061)
    drain.add_argument("--host", default="127.0.0.1")
    drain.add_argument("--timeout", type=float, default=25.0, help="seconds before remaining slices are handed back")
    drain.add_argument("--auth-token-file", default=None, help="the sidecar's bearer token, when it requires one")
    drain.add_argument("--tls-ca", default=None, help="the sidecar serves TLS: trust certificates signed by this CA")
    drain.add_argument("--tls-server-name", default=None, help="the name the sidecar's certificate is issued for")
    drain.set_defaults(func=_drain)


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal
    from pathlib import Path

    from llmfleet.engine.client import EngineClient
    from llmfleet.serving import TlsFiles, TokenFile
    from llmfleet.sidecar.app import serve_sidecar

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    tls = TlsFiles(Path(args.tls_cert), Path(args.tls_key)) if args.tls_cert else None
    token = TokenFile(args.auth_token_file) if args.auth_token_file else None  # follows a rotated Secret

    async def main() -> None:
        engine: Any = EngineClient(args.engine_url.rstrip("/"), tokenizer=args.tokenizer, timeout=600.0)
        if args.engine == "simulated":
            from llmfleet.engine.simulated import SimulatedEngineClient, SimulatedEngineConfig

            config = SimulatedEngineConfig(max_num_seqs=args.max_num_seqs or 32, name=f"port{args.port}")
            engine = SimulatedEngineClient(config)
        handle = await serve_sidecar(
            engine,
            port=args.port,
            host=args.host,
            metrics_port=args.metrics_port,
            group=args.group,
            max_num_seqs=args.max_num_seqs,
            load_interval_s=args.load_interval,
            tls=tls,
            auth_token=token,
            health_port=args.health_port,
        )
        what = "a simulated engine" if args.engine == "simulated" else f"engine {args.engine_url}"
        print(f"sidecar serving on port {handle.port} for {what}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        finished, handed = await handle.drain(args.drain_timeout)
        print(f"drained: {finished} slices finished, {handed} handed back", flush=True)
        await handle.stop(grace_s=2.0)

    run_server(main, args.event_loop)
    return 0


def _drain(args: argparse.Namespace) -> int:
    import grpc

    from llmfleet.serving import read_token_file
    from llmfleet.v1 import sidecar_pb2, sidecar_pb2_grpc

    token = read_token_file(args.auth_token_file) if args.auth_token_file else None
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    target = f"{args.host}:{args.port}"
    if args.tls_ca:
        from pathlib import Path

        creds = grpc.ssl_channel_credentials(root_certificates=Path(args.tls_ca).read_bytes())
        options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        stub = sidecar_pb2_grpc.SidecarStub(channel)
        try:
            request = sidecar_pb2.DrainRequest(timeout_ms=int(args.timeout * 1000))
            resp = stub.Drain(request, timeout=args.timeout + 15, metadata=metadata)
        except grpc.RpcError as exc:
            print(f"drain failed: {exc.code().name}: {exc.details()}")
            return 1
    print(f"drained: {resp.finished} slices finished, {resp.handed_back} handed back")
    return 0
