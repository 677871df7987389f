"""Run several policies over one trace, side by side, with the same engines and predictions,
and find each policy's goodput: the highest load at which it still meets the SLO."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from llmfleet.core.config import SchedulingConfig
from llmfleet.core.noise_predictor import NoisyOraclePredictor
from llmfleet.core.prediction import LengthEstimate, LengthPredictor, PredictionInput
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


class ReestimatedBy:
    """Admission estimates from one predictor, slice-boundary re-estimates from another."""

    reestimates = True

    def __init__(self, admission: LengthPredictor, later: LengthPredictor) -> None:
        self.admission, self.later = admission, later
        self.name = f"{admission.name}+{later.name}"

    def fit_reference(self, lengths: Sequence[int]) -> None:
        fit = getattr(self.admission, "fit_reference", None)
        if fit is not None:
            fit(lengths)

    def predict(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]:
        out: dict[int, LengthEstimate] = {}
        for predictor, group in ((self.admission, [i for i, it in enumerate(items) if not it.generated_tokens]),
                                 (self.later, [i for i, it in enumerate(items) if it.generated_tokens])):  # fmt: skip
            if group:
                out.update(zip(group, predictor.predict([items[i] for i in group]), strict=True))
        return [out[i] for i in range(len(items))]


def load_predictor(
    ranker_dir: str | None, trace: Sequence[TraceRequest], tau: float, seed: int = 0, reestimate: bool = True,
    reestimate_eval: str | None = None,
) -> LengthPredictor:
    """The learned ranker when `ranker_dir` is given, else the noise stand-in at `tau`.

    Trace requests carry no text, so the simulator cannot run a ranker's remaining-length model
    on real prefixes. With `reestimate`, an artifact that has one re-estimates at slice
    boundaries through the noise model, at the remaining-length tau it measured per k on its
    held-back prompts (its manifest's `tau_curve`): the same quality, not the same numbers.
    `reestimate_eval` (an `llmfleet ranker eval --generated-tokens` JSON) gives the noise
    stand-in its tau and re-estimate curve instead of `tau`."""
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
        remaining = getattr(getattr(predictor, "ranker", None), "remaining", None)
        if reestimate and remaining is not None and remaining.tau_curve:
            lengths = [t.output_tokens for t in trace]
            noise = NoisyOraclePredictor.fitted(lengths, tau=tau, seed=seed, tau_curve=remaining.tau_curve)
            return ReestimatedBy(predictor, noise)
        return predictor
    if reestimate_eval:
        stand_in = NoisyOraclePredictor.from_eval(reestimate_eval, (t.output_tokens for t in trace), seed=seed)
        return stand_in if reestimate else replace(stand_in, tau_curve=())
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
