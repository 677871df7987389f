"""The machine's drift taken out of a live comparison: the simulator at each replay's own engine speed.

On a shared machine the engines' speed moves between replays, and near the fleet's capacity a
10% change in speed moves `fcfs-rr`'s mean latency by about half (the simulator at 4.2/s: 2.44 s
at 0.9x, 3.39 s at 1x, 4.67 s at 1.1x). Two raw demo runs gave `llmfleet` 1.44 and 0.40 of
`fcfs-rr`'s mean, and in one run `fcfs-rr`'s two replays of the same requests were 2.35x apart
(bench/DATAPLANE.md, section 4). Intervals over requests cannot see this.

For each replay the calibrated simulator (`CALIBRATION`, the CPU fleet's cost model fitted on
this workload) is slowed until its mean service time, first token to last, matches the
replay's; no queue order changes that time, so it measures the engines' speed during the replay.
The speed also moves within a replay (one ran 14 ms a token for its first 20 s and 10.5 ms
after), and a slow phase while the queue builds costs far more than its share of the mean: so
the replay's time per token is also taken in 10-s phases (`PHASE_S`), from each request's first
and last token, and the simulator's speed is fitted phase by phase to it (`fit_phases`,
`SimConfig.speed_phases`). The same requests are then simulated under the same policy at that
course of speeds. A policy's residual is its live latency over the simulated one at its own
speeds (the geometric mean over its replays); its drift-adjusted ratio is the simulator's ratio at one common speed times the ratio
of residuals (`adjust`). Where the simulator is faithful up to the machine's speed, the
residuals are equal and the adjusted ratio is the simulator's; whatever a policy does live that
the simulator misses moves its residual, and so its adjusted ratio. It is a model's estimate,
not a measurement, and is reported beside the raw ratios, never instead of them.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmfleet.sim.costmodel import CostModel
from llmfleet.sim.instance import EngineConfig
from llmfleet.sim.simulator import SimConfig
from llmfleet.sim.traces import TraceRequest

if TYPE_CHECKING:
    from llmfleet.demo.replay import Outcome
    from llmfleet.demo.run import DemoOptions
    from llmfleet.demo.workload import WorkloadRequest

# The CPU fleet's cost model calibrated on the demo's own workload (4 slots per engine, the e2e
# workload, prefill's slowdown fitted apart from decode's; `bench/sim_fidelity.py --e2e-workload`,
# bench/DATAPLANE.md section 5). It lives with the benchmark that measured it; outside a checkout
# there is none, and nothing is adjusted.
CALIBRATION = Path(__file__).resolve().parents[2] / "bench" / "results" / "sim_fidelity_e2e.json"

BISECT_STEPS = 18  # the slowdown to within 1e-5 of the bracket [0.5, 2.5]
SLOWDOWN_BRACKET = (0.5, 2.5)
PHASE_S = 10.0  # the machine's speed is fitted per this many seconds of a replay
# A phase's speed is fitted only where requests decoded for at least this many request-seconds
# in it (a replay's last seconds, with one or two requests left, say little); elsewhere the
# phase before it carries on.
MIN_DECODE_S = 5.0
PHASE_ROUNDS = 3  # fitting rounds: each corrects every phase by live over simulated time per token
BOOTSTRAP_RESAMPLES = 2000  # as the demo's table's intervals (llmfleet.demo.report)

# (arrival, first token, finish) of one request, seconds from the replay's start.
Times = tuple[float, float, float]
Phases = tuple[tuple[float, float], ...]


def calibrated_cost(path: Path = CALIBRATION) -> CostModel:
    """The calibrated cost model in a `bench/sim_fidelity.py` result."""
    return CostModel.from_dict(json.loads(path.read_text())["cost_model"]["calibrated"])


def workload_trace(workload: Sequence[WorkloadRequest]) -> list[TraceRequest]:
    """The demo's requests (`WorkloadRequest`) as a simulator trace. A prompt's tokens are taken
    as a quarter of its characters: what the engines' tokenizer makes of these prompts."""
    return [TraceRequest(r.request_id, r.arrival_s, max(8, len(r.prompt_text or "") // 4), r.output_tokens) for r in workload]


def sim_fleet(engines: int, max_num_seqs: int, max_model_len: int = 2048) -> SimConfig:
    """The simulator's fleet for a local fleet: its engines, slots and per-step token budget
    (vLLM batches up to the model length of prompt tokens per step here)."""
    return SimConfig(instances=engines, engine=EngineConfig(max_running=max_num_seqs, token_budget=max_model_len))


def means(rows: Sequence[Times]) -> dict[str, float]:
    """Mean service time (first token to last), latency and TTFT of (arrival, first, finish) rows."""
    return {
        "service_s": statistics.fmean(f - t for _, t, f in rows),
        "latency_s": statistics.fmean(f - a for a, _, f in rows),
        "ttft_s": statistics.fmean(t - a for a, t, _ in rows),
    }


def fit_slowdown(service_at: Callable[[float], float], live_service_s: float, steps: int = BISECT_STEPS) -> float:
    """The engine slowdown at which the simulated mean service time (`service_at(k)`, which grows
    with k) matches the live one, by bisection within `SLOWDOWN_BRACKET`."""
    lo, hi = SLOWDOWN_BRACKET
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if service_at(mid) < live_service_s else (lo, mid)
    return (lo + hi) / 2


def time_per_token_by_phase(rows: Mapping[str, Times], tokens: Mapping[str, int], phase_s: float = PHASE_S) -> dict[int, float]:
    """Per phase (its index): the mean time per token of the requests decoding in it, each
    weighted by how long it decoded there; phases with less than `MIN_DECODE_S` of decoding are
    left out. A request's time per token is its first to last token over its tokens after the first."""
    acc: dict[int, list[float]] = {}
    for i, (_, first, finish) in rows.items():
        n = tokens.get(i, 0)
        if n < 2 or finish <= first:
            continue
        per_token = (finish - first) / (n - 1)
        for b in range(int(first // phase_s), int(finish // phase_s) + 1):
            overlap = min(finish, (b + 1) * phase_s) - max(first, b * phase_s)
            if overlap > 0:
                total = acc.setdefault(b, [0.0, 0.0])
                total[0] += overlap * per_token
                total[1] += overlap
    return {b: s / w for b, (s, w) in acc.items() if w >= MIN_DECODE_S}


def as_phases(factors: Mapping[int, float], phase_s: float = PHASE_S) -> Phases:
    """`SimConfig.speed_phases` from per-phase factors; the first fitted phase also covers the
    time before it."""
    return tuple((0.0 if n == 0 else b * phase_s, f) for n, (b, f) in enumerate(sorted(factors.items())))


def fit_phases(
    rows: Mapping[str, Times], tokens: Mapping[str, int], simulate: Callable[[Phases], Mapping[str, Times]],
    phase_s: float = PHASE_S,
) -> Phases:  # fmt: skip
    """Speed factors per phase at which the simulator's time per token, phase by phase, matches
    the replay's (`simulate(phases)` runs the replay's requests at a base speed with them)."""
    live = time_per_token_by_phase(rows, tokens, phase_s)
    factors = dict.fromkeys(live, 1.0)
    for _ in range(PHASE_ROUNDS):
        simulated = simulate(as_phases(factors, phase_s))
        sim = time_per_token_by_phase({i: simulated[i] for i in rows}, tokens, phase_s)
        factors = {b: f * live[b] / sim[b] if b in sim else f for b, f in factors.items()}
    return as_phases(factors, phase_s)


@dataclass(frozen=True)
class ReplayFit:
    """One replay beside the simulator at the replay's own engine speed."""

    label: str  # the replay's name in the results (`fcfs-rr (earlier)`)
    entry: str  # the policy entry it ran (`fcfs-rr`)
    slowdown: float
    live: dict[str, float]  # `means` of the replay
    simulated: dict[str, float]  # `means` of the simulator at `slowdown` (and `phases`)
    phases: Phases | None = None  # the speed's course within the replay, relative to `slowdown`
    simulated_at_mean_speed: dict[str, float] | None = None  # `means` at `slowdown` alone
    # Every request's times, live and simulated at the fitted speed: what intervals resample.
    live_rows: Mapping[str, Times] | None = None
    simulated_rows: Mapping[str, Times] | None = None

    @property
    def residual(self) -> float:
        """Live latency over the simulated, at the replay's own speed."""
        return self.live["latency_s"] / self.simulated["latency_s"]


def fit_replay(
    label: str, entry: str, rows: Mapping[str, Times], simulate: Callable[[float, Phases | None], Mapping[str, Times]],
    tokens: Mapping[str, int] | None = None,
) -> ReplayFit:  # fmt: skip
    """Fit the simulator's speed to one replay's completed requests (`rows`, by request id);
    `simulate(k, phases)` gives every request's times under the replay's policy at slowdown k,
    with the speed's course `phases` on top (None: constant). With each request's `tokens`, the
    course within the replay is fitted too (`fit_phases`); without them, the mean speed alone."""
    live = means(list(rows.values()))

    def at(k: float, phases: Phases | None = None) -> dict[str, float]:
        simulated = simulate(k, phases)
        return means([simulated[i] for i in rows])

    slowdown = fit_slowdown(lambda k: at(k)["service_s"], live["service_s"])
    if tokens is None:
        phases, at_mean = None, None
    else:
        phases, at_mean = fit_phases(rows, tokens, lambda ph: simulate(slowdown, ph)), at(slowdown)
    simulated = simulate(slowdown, phases)
    sim_rows = {i: simulated[i] for i in rows}
    return ReplayFit(label, entry, slowdown, live, means(list(sim_rows.values())), phases, at_mean, dict(rows), sim_rows)


def adjust(fits: Sequence[ReplayFit], base: str, at_common: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Each policy entry's mean latency as a ratio to `base`'s: live, and with the drift taken
    out. `at_common` is each entry's simulated mean latency at one common speed; an entry's
    residual is the geometric mean of its replays' `ReplayFit.residual`."""

    def gmean(xs: list[float]) -> float:
        return math.exp(statistics.fmean(math.log(x) for x in xs))

    live = {e: statistics.fmean(f.live["latency_s"] for f in fits if f.entry == e) for e in at_common}
    residual = {e: gmean([f.residual for f in fits if f.entry == e]) for e in at_common}
    return {
        e: {
            "live_ratio": round(live[e] / live[base], 3),
            "residual": round(residual[e], 3),
            "simulated_ratio_at_common_speed": round(at_common[e] / at_common[base], 3),
            "adjusted_ratio": round(at_common[e] / at_common[base] * residual[e] / residual[base], 3),
        }
        for e in at_common
    }


def _metric(rows: Mapping[str, Times], ids: Sequence[str], metric: str) -> np.ndarray:
    """Each request's latency ("latency_s") or time to first token ("ttft_s"), in `ids` order."""
    first_or_last = 1 if metric == "ttft_s" else 2
    return np.array([rows[i][first_or_last] - rows[i][0] for i in ids])


def _resampled(
    replays: Sequence[tuple[str, np.ndarray, np.ndarray]], common: Mapping[str, np.ndarray], base: str, idx: np.ndarray,
) -> dict[str, np.ndarray]:  # fmt: skip
    """`adjust`'s ratio per row of resampled indices `idx`: (entry, live, simulated) per replay,
    and each entry's requests simulated at the common speed."""
    logs: dict[str, list[np.ndarray]] = {}
    for entry, live, sim in replays:
        logs.setdefault(entry, []).append(np.log(live[idx].mean(axis=1) / sim[idx].mean(axis=1)))
    resid = {e: np.exp(np.mean(v, axis=0)) for e, v in logs.items()}  # geometric mean over its replays
    at = {e: c[idx].mean(axis=1) for e, c in common.items()}
    return {e: at[e] / at[base] * resid[e] / resid[base] for e in common}


def adjusted_intervals(
    fits: Sequence[ReplayFit], base: str, common_rows: Mapping[str, Mapping[str, Times]],
    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per policy entry, a paired bootstrap 95% interval over requests on the drift-adjusted ratio
    to `base` of mean latency (`adjust` gives its estimate), and the same ratio of mean TTFT with
    its interval. One resample of request ids is applied to every replay live, to its simulation
    at its own speed, and to the simulator at the common speed (`common_rows`, per entry), so the
    interval carries how much the requests alone move the estimate. It does not carry the
    model's own error (bench/DATAPLANE.md, section 4). Empty without every request's times."""
    if any(f.live_rows is None or f.simulated_rows is None for f in fits):
        return {}
    ids = sorted(set.intersection(*[set(f.live_rows or ()) for f in fits], *[set(rows) for rows in common_rows.values()]))
    if len(ids) < 2:
        return {}
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(resamples, len(ids)))
    whole = np.arange(len(ids))[None, :]  # the sample itself, as a single "resample"
    out: dict[str, dict[str, Any]] = {e: {} for e in common_rows}
    for metric, name in (("latency_s", "adjusted_ratio"), ("ttft_s", "adjusted_ttft_ratio")):
        replays = [(f.entry, _metric(f.live_rows, ids, metric), _metric(f.simulated_rows, ids, metric)) for f in fits]  # type: ignore[arg-type]
        common = {e: _metric(rows, ids, metric) for e, rows in common_rows.items()}
        point, spread = _resampled(replays, common, base, whole), _resampled(replays, common, base, draws)
        for e in common_rows:
            lo, hi = np.percentile(spread[e], [2.5, 97.5])
            if name != "adjusted_ratio":  # `adjust` owns the mean latency's point estimate
                out[e][name] = round(float(point[e][0]), 3)
            out[e][f"{name}_ci95"] = [round(float(lo), 3), round(float(hi), 3)]
    return out


def adjusted_table(fits: Sequence[ReplayFit], base: str, common_rows: Mapping[str, Mapping[str, Times]]) -> dict[str, dict[str, Any]]:
    """`adjust` at the common speed (each entry's requests simulated there, `common_rows`), with
    `adjusted_intervals` beside each entry's ratios."""
    at_common = {e: means(list(rows.values()))["latency_s"] for e, rows in common_rows.items()}
    table: dict[str, dict[str, Any]] = dict(adjust(fits, base, at_common))
    for e, extra in adjusted_intervals(fits, base, common_rows).items():
        table[e].update(extra)
    return table


def drift_adjusted(
    replays: Mapping[str, tuple[str, Mapping[str, Times]]],
    simulate: Callable[[str, float, Phases | None], Mapping[str, Times]],
    base: str,
    tokens: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The drift taken out of one workload's replays: `replays` maps each label, in the order the
    replays ran, to its policy entry and its completed requests' times; `simulate(entry, k,
    phases)` runs the simulator under that entry at slowdown k and the speed's course `phases`.
    With each request's `tokens`, every replay's course of speeds is fitted (`fit_replay`). The
    common speed is the replays' median, constant."""
    fits = [fit_replay(label, entry, rows, functools.partial(simulate, entry), tokens) for label, (entry, rows) in replays.items()]
    common = statistics.median(f.slowdown for f in fits)
    entries = list(dict.fromkeys(f.entry for f in fits))
    ids = set.intersection(*(set(rows) for _, rows in replays.values()))
    common_rows = {e: {i: t for i, t in simulate(e, common, None).items() if i in ids} for e in entries}
    ratios = adjusted_table(fits, base, common_rows)
    return {
        "common_slowdown": round(common, 3),
        "phase_s": PHASE_S if tokens is not None else None,
        "replays": [
            {"label": f.label, "entry": f.entry, "engine_slowdown": round(f.slowdown, 3),
             "speed_phases": [round(x, 3) for _, x in f.phases] if f.phases else None,
             "live_latency_s": round(f.live["latency_s"], 3), "simulated_latency_s": round(f.simulated["latency_s"], 3),
             "simulated_latency_s_at_mean_speed": round(f.simulated_at_mean_speed["latency_s"], 3)
             if f.simulated_at_mean_speed else None}
            for f in fits
        ],  # fmt: skip
        "ratios": ratios,
    }


def drift_adjusted_ratios(
    options: DemoOptions, workload: Sequence[WorkloadRequest], outcomes_by_policy: Mapping[str, Sequence[Outcome]]
) -> dict[str, Any] | None:
    """A demo run's mean-latency ratios with the machine's drift taken out (each label's outcomes
    in the order the replays ran), or None where they cannot be: outside a checkout (no calibration), without the baseline, or with
    prompts that have no text for the ranker (`--prompts trace`)."""
    # The demo's own names, imported here: llmfleet.demo.run imports this module.
    from llmfleet.demo.report import BASELINE
    from llmfleet.demo.run import is_oracle, policy_config, policy_entry
    from llmfleet.policies.registry import make_policy
    from llmfleet.ranker import load_predictor
    from llmfleet.sim.live_predictions import ExactPredictor, PromptTextPredictor
    from llmfleet.sim.simulator import Simulator

    if not CALIBRATION.exists() or BASELINE not in outcomes_by_policy or any(r.prompt_text is None for r in workload):
        return None
    cost, trace = calibrated_cost(), workload_trace(workload)
    cfg = sim_fleet(options.fleet.engines, options.fleet.max_num_seqs, options.fleet.max_model_len)
    # What the live dispatcher predicts: its ranker on each prompt's text, or the exact length
    # where the replay told it (`--exact-lengths`, the oracle).
    texts = {r.request_id: r.prompt_text or "" for r in workload}
    ranked = PromptTextPredictor(load_predictor(options.ranker), texts) if options.ranker else None

    def simulate(entry: str, k: float, phases: Phases | None) -> dict[str, tuple[float, float, float]]:
        predictor = ExactPredictor() if is_oracle(entry) or not options.hidden_length else ranked
        policy = make_policy(policy_config(entry, options.slice_tokens, options.ranker))
        sim = Simulator(trace, policy, cost.slowed(k), replace(cfg, speed_phases=phases), predictor=predictor)  # type: ignore[arg-type]
        return {r.request_id: (r.arrival_s, r.first_token_s, r.finish_s) for r in sim.run().records}

    replays = {
        label: (policy_entry(label), {o.request_id: (o.arrival_s, o.first_token_s, o.finish_s) for o in outcomes
                                      if o.ok and o.first_token_s is not None and o.finish_s is not None})
        for label, outcomes in outcomes_by_policy.items()
    }  # fmt: skip
    return drift_adjusted(replays, simulate, BASELINE, {r.request_id: r.output_tokens for r in workload})
