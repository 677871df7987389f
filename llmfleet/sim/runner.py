"""Run several policies over one trace, side by side, with the same engines and predictions,
and find each policy's goodput: the highest load at which it still meets the SLO."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llmfleet.core.config import SchedulingConfig
from llmfleet.core.noise_predictor import NoisyOraclePredictor
from llmfleet.core.prediction import LengthPredictor
from llmfleet.policies.registry import make_policy
from llmfleet.sim.costmodel import CostModel
from llmfleet.sim.metrics import Slo, extras, summarize
from llmfleet.sim.simulator import SimConfig, SimResult, Simulator
from llmfleet.sim.traces import TraceRequest


@dataclass
class PolicyRun:
    summary: dict[str, Any]
    extra: dict[str, Any]
    result: SimResult


def load_predictor(
    ranker_dir: str | None, trace: Sequence[TraceRequest], tau: float, seed: int = 0
) -> LengthPredictor:
    """The learned ranker when `ranker_dir` is given, else the noise stand-in at `tau`."""
    if ranker_dir:
        try:
            from llmfleet.ranker import load_predictor as load_ranker  # type: ignore[attr-defined]
        except ImportError as exc:
            raise RuntimeError(
                "--ranker needs the learned ranker package (llmfleet.ranker with load_predictor(dir)), "
                f"which is not available in this build: {exc}"
            ) from exc
        predictor: LengthPredictor = load_ranker(ranker_dir)
        # Trace requests carry no text: the ranker maps each to a held-out prompt at the same
        # output-length quantile, so it needs the trace's length distribution up front.
        fit_reference = getattr(predictor, "fit_reference", None)
        if fit_reference is not None:
            fit_reference([t.output_tokens for t in trace])
        return predictor
    return NoisyOraclePredictor.fitted((t.output_tokens for t in trace), tau=tau, seed=seed)


def run_policies(
    trace: Sequence[TraceRequest],
    configs: Sequence[SchedulingConfig],
    cost: CostModel,
    cfg: SimConfig,
    predictor: LengthPredictor | None,
    on_progress: Callable[[str, int, int], None] | None = None,
    slo: Slo | None = None,
    labels: Sequence[str] | None = None,
) -> list[PolicyRun]:
    """One run per scheduling config; `labels` name the runs (default: the policy names)."""
    runs = []
    names = list(labels) if labels is not None else [c.policy for c in configs]
    for label, config in zip(names, configs, strict=True):

        def progress(done: int, total: int, _name: str = label) -> None:
            if on_progress is not None:
                on_progress(_name, done, total)

        result = Simulator(trace, make_policy(config), cost, cfg, predictor=predictor, progress=progress).run()
        summary = summarize(result, slo)
        summary["policy"] = label
        runs.append(PolicyRun(summary, extras(result), result))
    return runs


def find_threshold(
    attainment_at: Callable[[float], float],
    target: float,
    start: float = 0.5,
    tolerance: float = 0.02,
    floor: float = 0.01,
    ceiling: float = 64.0,
) -> float:
    """The highest rate scale whose SLO attainment is at least `target`.

    Attainment falls with load (more queueing, fuller batches), so: step the load up (or down)
    by factors of two from `start` until the target is bracketed, then bisect to a relative
    `tolerance`. Returns 0.0 when even `floor` misses the target. `attainment_at` may be asked
    about one load more than once: callers memoise it (and draw curves from the probes).
    """
    lo, hi = start, start
    if attainment_at(start) >= target:
        while attainment_at(hi) >= target:
            lo, hi = hi, hi * 2
            if hi > ceiling:
                return lo
    else:
        while attainment_at(lo) < target:
            hi, lo = lo, lo / 2
            if lo < floor:
                return 0.0
    while hi - lo > tolerance * lo:
        mid = (lo + hi) / 2
        if attainment_at(mid) >= target:
            lo = mid
        else:
            hi = mid
    return lo
