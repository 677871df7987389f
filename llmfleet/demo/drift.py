"""The machine's drift taken out of a live comparison: the simulator at each replay's own engine speed.

On a shared machine the engines' speed moves between replays, and near the fleet's capacity a
10% change in speed moves `fcfs-rr`'s mean latency by about half (the simulator at 4.2/s: 2.44 s
at 0.9x, 3.39 s at 1x, 4.67 s at 1.1x). Two raw demo runs gave `llmfleet` 1.44 and 0.40 of
`fcfs-rr`'s mean, and in one run `fcfs-rr`'s two replays of the same requests were 2.35x apart
(bench/DATAPLANE.md, section 4). Intervals over requests cannot see this.

For each replay the calibrated simulator (`CALIBRATION`, the CPU fleet's cost model fitted on
this workload) is slowed until its mean service time, first token to last, matches the
replay's; no queue order changes that time, so it measures the engines' speed during the replay.
The same requests are then simulated under the same policy at that speed. A policy's residual is
its live latency over the simulated one at its own speed (the geometric mean over its
replays); its drift-adjusted ratio is the simulator's ratio at one common speed times the ratio
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmfleet.sim.costmodel import CostModel
from llmfleet.sim.instance import EngineConfig
from llmfleet.sim.simulator import SimConfig
from llmfleet.sim.traces import TraceRequest

# The CPU fleet's cost model calibrated on the demo's own workload (4 slots per engine, the e2e
# workload, prefill's slowdown fitted apart from decode's; `bench/sim_fidelity.py --e2e`,
# bench/DATAPLANE.md section 5). It lives with the benchmark that measured it; outside a checkout
# there is none, and nothing is adjusted.
CALIBRATION = Path(__file__).resolve().parents[2] / "bench" / "results" / "sim_fidelity_e2e.json"

BISECT_STEPS = 18  # the slowdown to within 1e-5 of the bracket [0.5, 2.5]
SLOWDOWN_BRACKET = (0.5, 2.5)

# (arrival, first token, finish) of one request, seconds from the replay's start.
Times = tuple[float, float, float]


def calibrated_cost(path: Path = CALIBRATION) -> CostModel:
    """The calibrated cost model in a `bench/sim_fidelity.py` result."""
    return CostModel.from_dict(json.loads(path.read_text())["cost_model"]["calibrated"])


def workload_trace(workload: Sequence[Any]) -> list[TraceRequest]:
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


@dataclass(frozen=True)
class ReplayFit:
    """One replay beside the simulator at the replay's own engine speed."""

    label: str  # the replay's name in the results (`fcfs-rr (earlier)`)
    entry: str  # the policy entry it ran (`fcfs-rr`)
    slowdown: float
    live: dict[str, float]  # `means` of the replay
    simulated: dict[str, float]  # `means` of the simulator at `slowdown`

    @property
    def residual(self) -> float:
        """Live latency over the simulated, at the replay's own speed."""
        return self.live["latency_s"] / self.simulated["latency_s"]


def fit_replay(label: str, entry: str, rows: Mapping[str, Times], simulate: Callable[[float], Mapping[str, Times]]) -> ReplayFit:
    """Fit the simulator's speed to one replay's completed requests (`rows`, by request id);
    `simulate(k)` gives every request's times under the replay's policy at slowdown k."""
    live = means(list(rows.values()))

    def at(k: float) -> dict[str, float]:
        simulated = simulate(k)
        return means([simulated[i] for i in rows])

    slowdown = fit_slowdown(lambda k: at(k)["service_s"], live["service_s"])
    return ReplayFit(label, entry, slowdown, live, at(slowdown))


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


def drift_adjusted(
    replays: Mapping[str, tuple[str, Mapping[str, Times]]],
    simulate: Callable[[str, float], Mapping[str, Times]],
    base: str,
) -> dict[str, Any]:
    """The drift taken out of one workload's replays: `replays` maps each label, in the order the
    replays ran, to its policy entry and its completed requests' times; `simulate(entry, k)`
    runs the simulator under that entry at slowdown k. The common speed is the replays' median."""
    fits = [fit_replay(label, entry, rows, functools.partial(simulate, entry)) for label, (entry, rows) in replays.items()]
    common = statistics.median(f.slowdown for f in fits)
    entries = list(dict.fromkeys(f.entry for f in fits))
    ids = set.intersection(*(set(rows) for _, rows in replays.values()))
    at_common = {e: means([t for i, t in simulate(e, common).items() if i in ids])["latency_s"] for e in entries}
    return {
        "common_slowdown": round(common, 3),
        "replays": [
            {"label": f.label, "entry": f.entry, "engine_slowdown": round(f.slowdown, 3),
             "live_latency_s": round(f.live["latency_s"], 3), "simulated_latency_s": round(f.simulated["latency_s"], 3)}
            for f in fits
        ],  # fmt: skip
        "ratios": adjust(fits, base, at_common),
    }
