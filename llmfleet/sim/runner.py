"""Run several policies over one trace, side by side, with the same engines and predictions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llmfleet.core.noise_predictor import NoisyOraclePredictor
from llmfleet.core.prediction import LengthPredictor
from llmfleet.policies.registry import make_policy
from llmfleet.sim.costmodel import CostModel
from llmfleet.sim.metrics import extras, summarize
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
    policies: Sequence[str],
    cost: CostModel,
    cfg: SimConfig,
    predictor: LengthPredictor | None,
    on_progress: Callable[[str, int, int], None] | None = None,
    policy_options: dict[str, dict[str, Any]] | None = None,
) -> list[PolicyRun]:
    runs = []
    for name in policies:
        policy = make_policy(name, **(policy_options or {}).get(name, {}))

        def progress(done: int, total: int, _name: str = name) -> None:
            if on_progress is not None:
                on_progress(_name, done, total)

        result = Simulator(trace, policy, cost, cfg, predictor=predictor, progress=progress).run()
        runs.append(PolicyRun(summarize(result), extras(result), result))
    return runs
