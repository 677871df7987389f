"""`llmfleet client`: try a dispatcher from the shell.

    llmfleet client generate "Once upon a time" --max-tokens 32
    llmfleet client generate --token-ids 1,2,3 --max-tokens 8 --json
    llmfleet client stats
    llmfleet client cancel REQUEST_ID
"""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = "Send requests to an llmfleet dispatcher (streams tokens as they arrive)."
    parser.add_argument("--target", default="127.0.0.1:50051",
                        help="dispatcher host:port, or several replicas separated by commas (default 127.0.0.1:50051)")
    parser.add_argument("--retries", type=int, default=3,
                        help="if a dispatcher fails mid-stream, call again (the next replica) this many times, "
                             "resuming from the tokens received; 0 turns it off (default 3)")  # fmt: skip
    parser.add_argument("--token-file", default=None, help="bearer token file, if the dispatcher requires one")
    parser.add_argument("--tls", action="store_true", help="use TLS (system roots, or --ca-cert)")
    parser.add_argument("--ca-cert", default=None, help="PEM file of the CA that signed the dispatcher's certificate")
    parser.add_argument("--timeout", type=float, default=None, help="gRPC deadline in seconds")
    sub = parser.add_subparsers(dest="client_command", metavar="SUBCOMMAND")

    gen = sub.add_parser("generate", help="Generate tokens for a prompt and print them as they stream.")
    gen.add_argument("prompt", nargs="?", default=None, help="prompt text (or use --token-ids)")
    gen.add_argument("--token-ids", default=None, help="prompt as comma-separated token ids")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT",
                     help="stop when the text contains this (repeatable; cut from the output, as vLLM does)")
    gen.add_argument("--stop-token-id", type=int, action="append", default=[], metavar="ID",
                     help="stop when this token id is generated (repeatable)")
    gen.add_argument("--min-tokens", type=int, default=0, help="no EOS or stop before this many tokens")
    gen.add_argument("--priority", type=int, default=0, help="larger is more important")
    gen.add_argument("--request-id", default="")
    gen.add_argument("--deadline-ms", type=int, default=0)
    gen.add_argument("--ignore-eos", action="store_true", help="always generate exactly --max-tokens tokens")
    gen.add_argument("--json", action="store_true", help="print one JSON result instead of streaming text")
    gen.set_defaults(func=_generate)

    stats = sub.add_parser("stats", help="Show the dispatcher's queue, pods and policy.")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=_stats)

    cancel = sub.add_parser("cancel", help="Cancel a request by id.")
    cancel.add_argument("request_id")
    cancel.set_defaults(func=_cancel)


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from pathlib import Path

    from llmfleet.client.client import DispatcherClient

    token = Path(args.token_file).read_text().strip() if args.token_file else None
    roots = Path(args.ca_cert).read_bytes() if args.ca_cert else None
    return DispatcherClient(args.target, token=token, root_certificates=roots, tls=args.tls, retries=args.retries)


def _run(coro) -> int:  # type: ignore[no-untyped-def]
    import asyncio
    import sys

    import grpc

    try:
        return int(asyncio.run(coro))
    except grpc.aio.AioRpcError as exc:
        hint = dict(exc.trailing_metadata() or ()).get("retry-after-ms")
        extra = f" (retry after {hint} ms)" if hint else ""
        print(f"error: {exc.code().name}: {exc.details()}{extra}", file=sys.stderr)
        return 1


def _generate(args: argparse.Namespace) -> int:
    import json
    import sys

    if (args.prompt is None) == (args.token_ids is None):
        print("error: give a prompt or --token-ids (one of them)", file=sys.stderr)
        return 2
    try:
        ids = [int(t) for t in args.token_ids.split(",")] if args.token_ids else None
    except ValueError:
        print("error: --token-ids must be comma-separated integers", file=sys.stderr)
        return 2

    async def main() -> int:
        async with _client(args) as c:
            kwargs = dict(
                prompt=args.prompt,
                prompt_ids=ids,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                top_p=args.top_p,
                seed=args.seed,
                stop=args.stop,
                stop_token_ids=args.stop_token_id,
                min_tokens=args.min_tokens,
                priority=args.priority,
                request_id=args.request_id,
                deadline_ms=args.deadline_ms,
                ignore_eos=args.ignore_eos,
            )
            if args.json:
                g = await c.generate(timeout=args.timeout, **kwargs)
                u = g.usage
                print(json.dumps({
                    "request_id": g.request_id, "token_ids": g.token_ids, "text": g.text,
                    "finish_reason": g.finish_reason,
                    "usage": {f.name: getattr(u, f.name) for f in u.DESCRIPTOR.fields} if u else None,
                }))  # fmt: skip
                return 0
            async for msg in c.resumable_stream(timeout=args.timeout, **kwargs):
                sys.stdout.write(msg.text)
                sys.stdout.flush()
                if msg.finish_reason:
                    u = msg.usage
                    print(
                        f"\n[{msg.request_id}: {u.completion_tokens} tokens, {msg.finish_reason}, "
                        f"ttft {u.ttft_s * 1000:.0f} ms, total {u.e2e_s * 1000:.0f} ms, {u.slices} slices, "
                        f"{u.migrations} migrations, {u.failovers} failovers"
                        + (f", resumed after {u.resumed_tokens} tokens" if u.resumed_tokens else "") + "]",
                        file=sys.stderr,
                    )
            return 0

    return _run(main())


def _stats(args: argparse.Namespace) -> int:
    import json

    from google.protobuf.json_format import MessageToDict

    async def main() -> int:
        async with _client(args) as c:
            s = await c.stats()
        if args.json:
            print(json.dumps(MessageToDict(s, always_print_fields_with_no_presence=True)))
            return 0
        print(f"policy {s.policy}  slice {s.slice_tokens} tokens  predictor {s.predictor}")
        print(f"queue {s.queue_length}/{s.max_queue}  running {s.running}  completed {s.completed}  "
              f"failed {s.failed}  rejected {s.rejected}  migrations {s.migrations}  failovers {s.failovers}")  # fmt: skip
        print(f"{'POD':<28} {'ADDRESS':<24} {'GROUP':<8} {'HEALTHY':<8} {'INFLIGHT':>8} {'RUN':>5} {'WAIT':>5} {'KV%':>6}")
        for p in s.pods:
            print(f"{p.pod_id:<28} {p.address:<24} {p.group or '-':<8} {str(p.healthy).lower():<8} "
                  f"{p.inflight:>8} {p.engine_running:>5} {p.engine_waiting:>5} {p.kv_cache_usage * 100:>5.1f}")  # fmt: skip
        return 0

    return _run(main())


def _cancel(args: argparse.Namespace) -> int:
    async def main() -> int:
        async with _client(args) as c:
            found = await c.cancel(args.request_id)
        print("cancelled" if found else "no such live request")
        return 0 if found else 1

    return _run(main())
