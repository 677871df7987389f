"""`llmfleet sim ...`: list policies, run them side by side on a trace, sweep loads, calibrate.

Heavy imports (numpy, rich, matplotlib, the simulator) happen inside the handlers so that
`llmfleet --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llmfleet.sim.cli_args import add_sim_args, csv_list, floats, positive_float


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sim_command", metavar="SUBCOMMAND", title="subcommands")

    p = sub.add_parser(
        "policies", help="list the scheduling policies", description="List every registered policy."
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_policies)

    p = sub.add_parser(
        "run",
        help="replay a trace under several policies side by side",
        description="Replay a trace under each policy with identical engines and predictions; print a table "
        "and optionally write JSON.",
    )
    add_sim_args(p)
    p.add_argument(
        "--rate-scale", type=positive_float, default=1.0, help="replay speed-up (2 = twice the arrival rate)"
    )
    p.add_argument("--out", default=None, help="write results JSON here")
    p.add_argument("--cdf", default=None, help="also draw the latency CDF of each policy to this PNG")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "sweep",
        help="run policies over a range of loads; plot latency vs load and CDFs",
        description="Run each policy at each rate scale; write sweep.json, latency_vs_load.png and latency_cdf.png.",
    )
    add_sim_args(p)
    p.add_argument("--rate-scales", type=floats, default=[1.0, 2.0, 3.0, 4.0], help="comma-separated loads")
    p.add_argument("--out-dir", required=True, help="folder for sweep.json and the PNG plots")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "capacity",
        help="goodput: the highest load each policy serves within the SLO; attainment curves",
        description="For each policy, find the highest arrival rate (trace rate scale) at which at least "
        "--attainment of requests meet the SLO (TTFT <= --ttft-slo and time per output token <= --tpot-slo). "
        "Also runs every policy at the overload point, the load where fcfs-rr meets the SLO for about half "
        "the requests. Writes JSON and, with --plot, SLO attainment against load.",
    )
    add_sim_args(p)
    p.add_argument("--attainment", type=float, default=0.9, help="share of requests that must meet the SLO")
    p.add_argument("--out", required=True, help="results JSON to write")
    p.add_argument("--plot", default=None, help="also draw SLO attainment against load to this PNG")
    p.set_defaults(func=cmd_capacity)

    from llmfleet.sim import calibrate_cli

    calibrate_cli.register(sub)


# ------------------------------------------------------------------------------------ helpers
def _one_line(exc: Exception) -> str:
    """pydantic's multi-line validation errors, as one readable line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        items = errors()
        if items:
            first = items[0]
            where = ".".join(str(x) for x in first.get("loc", ())) or "config"
            return f"{where}: {first.get('msg', exc)}"
    return str(exc)


def _policies(text: str) -> list[str]:
    from llmfleet.policies.registry import POLICIES

    names = list(POLICIES) if text == "all" else csv_list(text)
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise SystemExit(f"error: unknown policies {unknown}; known: {', '.join(POLICIES)}")
    if not names:
        raise SystemExit("error: no policies given")
    return names


def _configs(args: argparse.Namespace, names: list[str]):  # type: ignore[no-untyped-def]
    """One scheduling config per policy: the file's settings, the flags on top, the name set."""
    from llmfleet.core.config import SchedulingConfig

    base = SchedulingConfig.load(args.config) if args.config else SchedulingConfig()
    flags = {
        "slice_tokens": args.slice_tokens,
        "starvation_bound_seconds": args.starvation_bound,
        "starvation_overtake_turns": args.starvation_overtake_turns,
        "starvation_overtake_queue_fraction": args.starvation_overtake_queue_fraction,
        "prefill_pace_tokens": args.prefill_pace,
        "ranker": args.ranker,
    }
    return [base.with_changes(policy=name, **flags) for name in names]


def _engine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from llmfleet.sim.costmodel import load_cost_model
    from llmfleet.sim.instance import EngineConfig
    from llmfleet.sim.simulator import SimConfig

    cost = load_cost_model(args.cost_model)
    if args.instance_speeds is not None and len(args.instance_speeds) != args.instances:
        raise SystemExit(f"error: --instance-speeds has {len(args.instance_speeds)} values for {args.instances} instances")
    cfg = SimConfig(
        instances=args.instances,
        engine=EngineConfig(
            max_running=args.max_running, token_budget=args.token_budget, kv_capacity_tokens=args.kv_tokens
        ),
        instance_speeds=tuple(args.instance_speeds) if args.instance_speeds is not None else None,
        speed_phases=args.speed_phases,
    )
    return cost, cfg


def _slo(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from llmfleet.sim.metrics import Slo

    return Slo(ttft_s=args.ttft_slo, tpot_s=args.tpot_slo)


def _setup(args: argparse.Namespace, names: list[str], rate_scale: float) -> dict[str, Any]:
    from llmfleet.sim.runner import load_predictor
    from llmfleet.sim.traces import load_trace

    configs = _configs(args, names)
    trace = load_trace(args.trace, rate_scale=rate_scale, limit=args.limit)
    cost, cfg = _engine(args)
    predictor = load_predictor(configs[0].ranker, trace, args.tau, args.seed, reestimate=not args.no_reestimate,
                               reestimate_eval=args.reestimate_tau)  # fmt: skip
    return {"trace": trace, "cost": cost, "cfg": cfg, "predictor": predictor, "configs": configs}


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = 160  # piped output: keep the table whole rather than wrapped at 80
    return console


def _progress(disabled: bool):  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=disabled,
        transient=True,
    )


def _run_all(args: argparse.Namespace, names: list[str], rate_scale: float, progress, label: str = ""):  # type: ignore[no-untyped-def]
    from llmfleet.sim.runner import run_policies

    env = _setup(args, names, rate_scale)
    tasks = {n: progress.add_task(f"{label}{n}", total=len(env["trace"])) for n in names}

    def on_progress(name: str, done: int, total: int) -> None:
        progress.update(tasks[name], completed=done)

    runs = run_policies(
        env["trace"], env["configs"], env["cost"], env["cfg"], env["predictor"], on_progress, slo=_slo(args)
    )
    return env, runs


def _table(runs, title: str):  # type: ignore[no-untyped-def]
    from rich.table import Table

    base = next((r.summary for r in runs if r.summary["policy"] == "fcfs-rr"), None)
    table = Table(title=title)
    for col in ("policy", "done", "SLO met", "mean s", "p50 s", "p99 s", "TTFT s", "p99 TTFT s", "tok/s", "imbalance"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    if base:
        table.add_column("mean / fcfs-rr", justify="right")
        table.add_column("p99 / fcfs-rr", justify="right")
    for r in runs:
        s = r.summary
        row = [
            s["policy"],
            str(s["completed"]),
            f"{s['slo_attainment']:.1%}",
            f"{s['mean_latency_s']:.2f}",
            f"{s['p50_latency_s']:.2f}",
            f"{s['p99_latency_s']:.2f}",
            f"{s['mean_ttft_s']:.2f}",
            f"{s['p99_ttft_s']:.2f}",
            f"{s['throughput_tok_s']:.0f}",
            f"{s['load_imbalance']:.3f}",
        ]
        if base:
            row += [
                f"{s['mean_latency_s'] / base['mean_latency_s']:.2f}",
                f"{s['p99_latency_s'] / base['p99_latency_s']:.2f}",
            ]
        table.add_row(*row)
    return table


# ------------------------------------------------------------------------------------ commands
def cmd_policies(args: argparse.Namespace) -> int:
    from llmfleet.policies.registry import POLICIES

    if args.json:
        print(
            json.dumps([{"name": s.name, "description": s.description} for s in POLICIES.values()], indent=2)
        )
        return 0
    from rich.table import Table

    table = Table(title="llmfleet scheduling policies")
    table.add_column("name", style="bold")
    table.add_column("what it does")
    for spec in POLICIES.values():
        table.add_row(spec.name, spec.description)
    _console().print(table)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from llmfleet.sim.metrics import run_json

    names = _policies(args.policies)
    console = _console()
    try:
        with _progress(args.no_progress) as progress:
            env, runs = _run_all(args, names, args.rate_scale, progress)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    title = f"{args.trace} x{args.rate_scale:g}, {args.instances} instances, {len(env['trace'])} requests"
    console.print(_table(runs, title))
    if args.out:
        doc = run_json(str(args.trace), args.instances, args.rate_scale, [r.summary for r in runs])
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        console.print(f"wrote {args.out}")
    if args.cdf:
        from llmfleet.sim.plots import latency_cdf

        latency_cdf(
            {r.summary["policy"]: [x.latency_s for x in r.result.records] for r in runs}, args.cdf, title
        )
        console.print(f"wrote {args.cdf}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from llmfleet.sim.metrics import run_json
    from llmfleet.sim.plots import latency_cdf, latency_vs_load

    names = _policies(args.policies)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    console = _console()
    points: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
    docs = []
    cdf: dict[str, list[float]] = {}
    try:
        with _progress(args.no_progress) as progress:
            for scale in sorted(args.rate_scales):
                _, runs = _run_all(args, names, scale, progress, label=f"x{scale:g} ")
                for r in runs:
                    s = r.summary
                    points[s["policy"]].append((scale, s["mean_latency_s"], s["p99_latency_s"]))
                    cdf[s["policy"]] = [x.latency_s for x in r.result.records]
                docs.append(run_json(str(args.trace), args.instances, scale, [r.summary for r in runs]))
                console.print(_table(runs, f"{args.trace} x{scale:g}, {args.instances} instances"))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (out_dir / "sweep.json").write_text(json.dumps({"trace": str(args.trace), "runs": docs}, indent=2) + "\n")
    title = f"{Path(str(args.trace)).stem}, {args.instances} instances"
    latency_vs_load(points, out_dir / "latency_vs_load.png", title)
    latency_cdf(cdf, out_dir / "latency_cdf.png", f"{title}, load x{max(args.rate_scales):g}")
    console.print(f"wrote {out_dir / 'sweep.json'}, latency_vs_load.png, latency_cdf.png")
    return 0


def cmd_capacity(args: argparse.Namespace) -> int:
    from llmfleet.sim.capacity import CapacityStudy

    names = _policies(args.policies)
    console = _console()
    if not 0 < args.attainment < 1:
        print("error: --attainment must be between 0 and 1", file=sys.stderr)
        return 2
    try:
        cost, cfg = _engine(args)
        configs = _configs(args, names)
        with _progress(args.no_progress) as progress:
            task = progress.add_task("simulations", total=None)

            def on_run(label: str, scale: float, summary: dict[str, Any]) -> None:
                progress.update(task, advance=1, description=f"{label} x{scale:g}: {summary['slo_attainment']:.1%} met")

            study = CapacityStudy(
                trace=str(args.trace),
                configs=configs,
                labels=names,
                cost=cost,
                cfg=cfg,
                slo=_slo(args),
                attainment=args.attainment,
                tau=args.tau,
                seed=args.seed,
                ranker=configs[0].ranker,
                reestimate=not args.no_reestimate,
                reestimate_eval=args.reestimate_tau,
                limit=args.limit,
                on_run=on_run,
            )
            doc = study.measure()
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    from rich.table import Table

    base = next(r for r in doc["results"] if r["policy"] == "fcfs-rr")
    table = Table(title=f"{args.trace}: goodput at {args.attainment:.0%} SLO attainment; overload point x{doc['overload_rate_scale']:g}")
    for col in ("policy", "goodput (rate scale)", "/ fcfs-rr", "SLO met @ overload", "TTFT s", "mean s", "p99 s"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in doc["results"]:
        o = r["at_overload"]
        ratio = r["goodput_rate_scale"] / base["goodput_rate_scale"] if base["goodput_rate_scale"] else float("nan")
        table.add_row(
            r["policy"],
            f"{r['goodput_rate_scale']:.3f}",
            f"{ratio:.2f}",
            f"{o['slo_attainment']:.1%}",
            f"{o['mean_ttft_s']:.2f}",
            f"{o['mean_latency_s']:.2f}",
            f"{o['p99_latency_s']:.2f}",
        )
    console.print(table)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    if args.plot:
        from llmfleet.sim.plots import attainment_vs_load

        attainment_vs_load(doc, args.plot, f"{Path(str(args.trace)).stem}, {args.instances} instances")
        console.print(f"wrote {args.plot}")
    return 0
