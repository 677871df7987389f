"""`llmfleet engine ...`: build the tiny model, serve real vLLM, and query a running engine."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="engine_command", metavar="SUBCOMMAND")

    p = sub.add_parser(
        "make-tiny-model",
        help="Build a tiny random-weight Llama model with a locally trained tokenizer.",
        description=(
            "Build a deterministic tiny Llama model (2 layers, hidden 256, 4 heads, 2 KV heads, "
            "head_dim 64, vocab 4096) with a byte-level BPE tokenizer trained on seeded local text. "
            "The same seed gives byte-identical files."
        ),
    )
    p.add_argument("dir", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed for weights and tokenizer corpus (default 0)")
    p.set_defaults(func=_make_tiny_model)

    p = sub.add_parser(
        "serve",
        help="Start a real vLLM OpenAI-compatible server with settings that suit this machine.",
        description=(
            "Start vLLM's OpenAI-compatible server. On the CPU build it adds float32, eager mode, "
            "a 1 GiB KV cache and unbound OpenMP threads unless you override them. Arguments after "
            "`--` go to vLLM unchanged. SIGTERM stops the server and its workers cleanly."
        ),
    )
    p.add_argument("--model", default=None, help="model folder or name (default: the tiny model from make setup)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--print-command", action="store_true", help="print the vLLM command and exit")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help="extra vLLM arguments, after --")
    p.set_defaults(func=_serve)

    p = sub.add_parser("complete", help="Send one completion to a running engine and print it.")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--priority", type=int, default=None)
    p.add_argument("prompt")
    p.set_defaults(func=_complete)

    p = sub.add_parser("load", help="Print a running engine's load (from its /metrics) as JSON.")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.set_defaults(func=_load)


def _make_tiny_model(args: argparse.Namespace) -> int:
    from llmfleet.engine.tiny_model import make_tiny_model

    out = make_tiny_model(args.dir, seed=args.seed)
    print(f"tiny model written to {out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from llmfleet.engine.process import default_model_dir
    from llmfleet.engine.serve import build_command, run_server

    extra = [a for a in args.vllm_args if a != "--"]
    model = args.model or str(default_model_dir())
    cmd, env = build_command(
        model,
        host=args.host,
        port=args.port,
        max_model_len=args.max_model_len,
        served_model_name=args.served_model_name,
        extra_args=extra,
    )
    if args.print_command:
        print(" ".join(f"{k}={v}" for k, v in env.items()), " ".join(cmd))
        return 0
    return run_server(cmd, env)


def _complete(args: argparse.Namespace) -> int:
    from llmfleet.engine.client import EngineClient
    from llmfleet.engine.errors import EngineError

    async def go() -> int:
        async with EngineClient(args.url) as client:
            try:
                c = await client.complete(
                    args.prompt, args.max_tokens, ignore_eos=args.ignore_eos, priority=args.priority
                )
            except EngineError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(json.dumps({"text": c.text, "token_ids": list(c.token_ids), "finish_reason": c.finish_reason}))
            return 0

    return asyncio.run(go())


def _load(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from llmfleet.engine.client import EngineClient
    from llmfleet.engine.errors import EngineError

    async def go() -> int:
        async with EngineClient(args.url) as client:
            try:
                print(json.dumps(asdict(await client.load())))
            except EngineError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            return 0

    return asyncio.run(go())
