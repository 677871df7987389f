"""`llmfleet bench`: list and run the benchmark scripts kept in the repository's bench/ folder.

Each script is a standalone Python file whose docstring's first line says what it measures and
whose results (JSON plus a plot) land in bench/results/. This command only finds and runs them,
so `python bench/NAME.py ...` and `llmfleet bench run NAME ...` are the same thing.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path


def bench_dir() -> Path:
    env = os.environ.get("LLMFLEET_BENCH_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "bench"


def discover(folder: Path | None = None) -> dict[str, str]:
    """Benchmark name -> first line of its docstring."""
    folder = folder or bench_dir()
    found: dict[str, str] = {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return found


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="SUBCOMMAND")
    p = sub.add_parser("list", help="List the benchmarks in bench/ with what each measures.")
    p.set_defaults(func=_list)
    p = sub.add_parser(
        "run",
        help="Run one benchmark; arguments after its name go to the script (try `run NAME --help`).",
    )
    p.add_argument("name", help="benchmark name, as shown by `llmfleet bench list`")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run)


def _list(_args: argparse.Namespace) -> int:
    found = discover()
    if not found:
        print(f"no benchmarks found in {bench_dir()}", file=sys.stderr)
        return 1
    width = max(len(n) for n in found)
    for name, summary in found.items():
        print(f"{name.ljust(width)}  {summary}")
    return 0


def _run(args: argparse.Namespace) -> int:
    found = discover()
    if args.name not in found:
        known = ", ".join(found) or "none"
        print(f"error: no benchmark named {args.name!r} (known: {known})", file=sys.stderr)
        return 2
    script = bench_dir() / f"{args.name}.py"
    return subprocess.call([sys.executable, str(script), *[a for a in args.args if a != "--"]])
