"""The arguments `llmfleet sim` shares between its subcommands, and argparse types that fail loudly."""

from __future__ import annotations

import argparse

TRACE_HELP = "trace file (Azure CSV or Mooncake JSONL) or a known name: conv, code, mooncake"


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def floats(text: str) -> list[float]:
    try:
        return [float(t) for t in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def ints(text: str) -> list[int]:
    try:
        return [int(t) for t in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return v


def positive_floats(text: str) -> list[float]:
    values = floats(text)
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers, got {text!r}")
    return values


def speed_phases(text: str) -> tuple[tuple[float, float], ...]:
    """`SimConfig.speed_phases` from "second:factor,second:factor", e.g. "0:1.3,20:0.9"."""
    try:
        phases = tuple((float(at), float(factor)) for at, factor in (part.split(":") for part in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated second:factor pairs, got {text!r}") from None
    from llmfleet.sim.simulator import check_speed_phases  # here: `--help` need not import the simulator

    try:
        check_speed_phases(phases)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ascending seconds and positive factors, got {text!r}") from None
    return phases


def positive_float(text: str) -> float:
    v = float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return v


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_sim_args(p: argparse.ArgumentParser, rate: bool = True) -> None:
    p.add_argument("--trace", required=True, help=TRACE_HELP)
    p.add_argument(
        "--policies",
        default="all",
        help="comma-separated policy names, or 'all' (see `llmfleet sim policies`)",
    )
    p.add_argument("--instances", type=positive_int, default=4, help="engine instances (default 4)")
    p.add_argument(
        "--instance-speeds",
        type=positive_floats,
        default=None,
        help="each instance's time as a multiple of the cost model's, comma-separated, one per instance "
        "(`llmfleet sim calibrate --fleet` prints them for a live fleet); default: all 1",
    )
    p.add_argument(
        "--speed-phases",
        type=speed_phases,
        default=None,
        help="the machine's speed moving over the run: second:factor pairs, ascending, e.g. 0:1.3,20:0.9 (every "
        "engine's time is the factor times its own from that second on; bench/dataplane_speed_fit.py fits them "
        "to a live replay); default: constant",
    )
    p.add_argument("--limit", type=positive_int, default=None, help="replay only the first N requests")
    p.add_argument(
        "--config",
        default=None,
        help="scheduling config YAML, the CRD's scheduling block (sliceTokens, starvationBoundSeconds, "
        "starvationOvertakeTurns, prefillPaceTokens, lengthGroups, ranker); the flags below override it",
    )
    p.add_argument("--slice-tokens", type=positive_int, default=None, help="slice length S (default: none)")
    p.add_argument(
        "--starvation-bound", type=positive_float, default=None, help="absolute starvation guard, seconds"
    )
    p.add_argument(
        "--starvation-overtake-turns",
        type=positive_float,
        default=None,
        help="llmfleet's load-relative starvation guard: how many turns of the fleet's running requests may "
        "start before a request (starvationOvertakeTurns; default 1)",
    )
    p.add_argument(
        "--starvation-overtake-queue-fraction",
        type=non_negative_float,
        default=None,
        help="how the overtake guard widens with the queue: a request may also be overtaken by this fraction of "
        "the requests waiting (starvationOvertakeQueueFraction; default 0.5; 0: turns alone)",
    )
    p.add_argument(
        "--prefill-pace", type=positive_int, default=None, help="llmfleet's prefill pacing budget, tokens"
    )
    p.add_argument(
        "--cost-model",
        default=None,
        help="engine cost: a profile name (llama2-70b-tp8-h100, the default; llama2-70b-tp4-h100; "
        "...-a100) or a JSON file from `llmfleet sim calibrate`",
    )
    p.add_argument("--max-running", type=positive_int, default=64, help="engine max_num_seqs (default 64)")
    p.add_argument(
        "--token-budget",
        type=positive_int,
        default=8192,
        help="engine max_num_batched_tokens (default 8192)",
    )
    p.add_argument(
        "--kv-tokens",
        type=positive_int,
        default=None,
        help="KV capacity per engine in tokens (default: the cost model's)",
    )
    p.add_argument(
        "--tau", type=float, default=0.6, help="Kendall's tau of the stand-in length predictor (default 0.6)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the stand-in predictor's noise")
    p.add_argument(
        "--ranker", default=None, help="learned ranker artifact directory (replaces the noise stand-in)"
    )
    p.add_argument(
        "--reestimate-tau", default=None, metavar="EVAL.json",
        help="the noise stand-in takes its tau, and re-estimates at slice boundaries at the remaining-length tau per "
        "generated tokens, from this `llmfleet ranker eval --generated-tokens` output",
    )  # fmt: skip
    p.add_argument(
        "--no-reestimate", action="store_true",
        help="estimate once at admission only, even with a ranker or --reestimate-tau that can re-estimate",
    )  # fmt: skip
    p.add_argument("--ttft-slo", type=positive_float, default=2.0, help="SLO: time to first token, s (default 2)")
    p.add_argument(
        "--tpot-slo", type=positive_float, default=0.1, help="SLO: time per output token, s (default 0.1)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
