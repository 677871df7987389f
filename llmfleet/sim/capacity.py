"""Goodput: for each policy, the highest arrival rate at which at least 90% of requests meet
the SLO (`llmfleet sim capacity`).

Every policy is measured on the same trace, engines and predictions. The *overload point* is
the load at which `fcfs-rr` (vanilla vLLM behind round-robin) meets the SLO for about half the
requests; every policy is also run there, side by side, for mean TTFT and mean and p99 latency.
Each (policy, load) pair is simulated once and memoised, so the attainment curves in the JSON
and the plot are exactly the probes the searches made, plus a common grid around the
overload point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llmfleet.core.config import SchedulingConfig
from llmfleet.core.prediction import LengthEstimate, LengthPredictor, PredictionInput
from llmfleet.sim.costmodel import CostModel
from llmfleet.sim.metrics import RESULT_KEYS, Slo
from llmfleet.sim.runner import PolicyRun, find_threshold, load_predictor, run_policies
from llmfleet.sim.simulator import SimConfig
from llmfleet.sim.traces import load_trace

BASELINE = "fcfs-rr"
OVERLOAD_ATTAINMENT = 0.5
GRID = (0.5, 0.75, 0.9, 1.0, 1.1)  # multiples of the overload point every policy is run at


class MemoPredictor:
    """A predictor that asks the one it wraps about each request id once (at admission)."""

    def __init__(self, inner: LengthPredictor) -> None:
        self.inner = inner
        self.name = inner.name
        self._memo: dict[str, LengthEstimate] = {}

    @property
    def reestimates(self) -> bool:
        return bool(getattr(self.inner, "reestimates", False))

    def predict(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]:
        if any(it.generated_tokens for it in items):  # a re-estimate depends on progress: not memoised
            return self.inner.predict(items)
        new = [it for it in items if it.request_id not in self._memo]
        if new:
            for it, est in zip(new, self.inner.predict(new), strict=True):
                self._memo[it.request_id] = est
        return [self._memo[it.request_id] for it in items]


@dataclass
class CapacityStudy:
    trace: str
    configs: Sequence[SchedulingConfig]
    labels: Sequence[str]
    cost: CostModel
    cfg: SimConfig
    slo: Slo
    attainment: float = 0.9
    tau: float = 0.6
    seed: int = 0
    ranker: str | None = None
    reestimate: bool = True
    reestimate_eval: str | None = None
    limit: int | None = None
    on_run: Callable[[str, float, dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        if BASELINE not in self.labels:
            raise ValueError(f"capacity needs {BASELINE!r} among the policies: it defines the overload point")
        self._configs = dict(zip(self.labels, self.configs, strict=True))
        self._runs: dict[tuple[str, float], PolicyRun] = {}
        self._predictor: MemoPredictor | None = None

    def run(self, label: str, scale: float) -> PolicyRun:
        scale = round(scale, 4)
        key = (label, scale)
        if key not in self._runs:
            config = self._configs[label]
            trace = load_trace(self.trace, rate_scale=scale, limit=self.limit)
            if self._predictor is None:
                # A request's estimate depends on the request, not on the load: one predictor,
                # memoised, serves every probe (a learned ranker predicts each request once).
                self._predictor = MemoPredictor(load_predictor(self.ranker, trace, self.tau, self.seed, self.reestimate,
                                                               self.reestimate_eval))  # fmt: skip
            (run,) = run_policies(
                trace, [config], self.cost, self.cfg, self._predictor, slo=self.slo, labels=[label]
            )
            self._runs[key] = run
            if self.on_run is not None:
                self.on_run(label, scale, run.summary)
        return self._runs[key]

    def attainment_at(self, label: str) -> Callable[[float], float]:
        return lambda scale: float(self.run(label, scale).summary["slo_attainment"])

    def measure(self) -> dict[str, Any]:
        overload = find_threshold(self.attainment_at(BASELINE), OVERLOAD_ATTAINMENT)
        if overload <= 0:
            raise ValueError(f"{BASELINE} misses the SLO for over half the requests even at the lowest load")
        goodput = {
            label: find_threshold(self.attainment_at(label), self.attainment, start=overload / 2)
            for label in self.labels
        }
        for label in self.labels:
            for m in GRID:
                self.run(label, overload * m)
        results = []
        for label in self.labels:
            at = self.run(label, overload).summary
            curve = sorted((s, r.summary["slo_attainment"]) for (lbl, s), r in self._runs.items() if lbl == label)
            results.append(
                {
                    "policy": label,
                    "goodput_rate_scale": goodput[label],
                    "curve": [[s, a] for s, a in curve],
                    "at_overload": {k: at[k] for k in RESULT_KEYS},
                }
            )
        return {
            "trace": self.trace,
            "instances": self.cfg.instances,
            "slo": {"ttft_s": self.slo.ttft_s, "tpot_s": self.slo.tpot_s, "attainment": self.attainment},
            "overload_rate_scale": round(overload, 4),
            "results": results,
        }
