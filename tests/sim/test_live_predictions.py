"""The simulator's stand-ins for what the live dispatcher predicts (`llmfleet.sim.live_predictions`)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from llmfleet.core.config import SchedulingConfig
from llmfleet.core.noise_predictor import NoisyOraclePredictor
from llmfleet.core.prediction import LengthEstimate, PredictionInput, exact_estimate
from llmfleet.sim.costmodel import load_cost_model
from llmfleet.sim.instance import EngineConfig
from llmfleet.sim.live_predictions import ExactPredictor, PromptTextPredictor
from llmfleet.sim.runner import run_policies
from llmfleet.sim.simulator import SimConfig
from llmfleet.sim.traces import TraceRequest


class ByWordCount:
    """Longer prompts, longer answers: a text-only predictor that records what it was asked."""

    name = "words"

    def __init__(self) -> None:
        self.asked: list[PredictionInput] = []

    def predict(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]:
        self.asked.extend(items)
        out = []
        for it in items:
            if it.prompt_text is None:
                raise ValueError("needs text")
            n = 10.0 * len(it.prompt_text.split())
            out.append(LengthEstimate(n, n, 2 * n))
        return out


def test_exact_estimates_are_the_dispatchers_for_fixed_lengths() -> None:
    items = [PredictionInput("a", 5, true_output_tokens=40), PredictionInput("b", 5, true_output_tokens=7)]
    assert ExactPredictor().predict(items) == [exact_estimate(40), exact_estimate(7)]
    with pytest.raises(ValueError, match="needs the true length"):
        ExactPredictor().predict([PredictionInput("c", 5)])


def test_the_inner_predictor_reads_the_text_and_never_the_true_length() -> None:
    inner = ByWordCount()
    wrapped = PromptTextPredictor(inner, {"a": "one two three", "b": "one"})
    got = wrapped.predict([PredictionInput("a", 9, true_output_tokens=1), PredictionInput("b", 2, true_output_tokens=500)])
    assert [e.expected_tokens for e in got] == [30.0, 10.0]
    assert [(it.prompt_text, it.true_output_tokens, it.prompt_tokens) for it in inner.asked] == [
        ("one two three", None, 9), ("one", None, 2)
    ]
    assert "words" in wrapped.name and wrapped.reestimates is False
    # A stand-in that needs the truth fails behind it: the truth is withheld, not merely unused.
    with pytest.raises(ValueError, match="true_output_tokens"):
        PromptTextPredictor(NoisyOraclePredictor(tau=1.0), {"a": "x"}).predict([PredictionInput("a", 1, true_output_tokens=3)])
    with pytest.raises(KeyError, match="no prompt text for request 'z'"):
        wrapped.predict([PredictionInput("z", 1)])


def _one_engine_queue(predictor) -> list[str]:  # type: ignore[no-untyped-def]
    """Requests queued together behind one at a single-slot engine: the order they finish in."""
    trace = [TraceRequest("first", 0.0, 16, 8)]  # takes the slot; the others queue behind it
    trace += [TraceRequest(rid, 0.001, 16, out) for rid, out in (("long", 400), ("short", 4), ("mid", 40))]
    cfg = SimConfig(instances=1, engine=EngineConfig(max_running=1, token_budget=2048))
    # The overtake guard off: the order under test is the predictor's alone (with it on, "long",
    # overtaken once in a queue of two, would go ahead of "mid" by the guard).
    config = SchedulingConfig(policy="llmfleet", starvation_overtake_turns=None)
    (run,) = run_policies(trace, [config], load_cost_model("simulated-engine"), cfg, predictor)
    return [r.request_id for r in sorted(run.result.records, key=lambda r: r.finish_s)]


def test_the_simulator_orders_the_queue_by_what_the_text_predicts() -> None:
    """With exact lengths the queue runs shortest first; with a text predictor that has the
    lengths backwards, in its order instead."""
    assert _one_engine_queue(ExactPredictor())[1:] == ["short", "mid", "long"]
    backwards = {"first": "a", "short": "a b c d e f", "mid": "a b c", "long": "a"}
    assert _one_engine_queue(PromptTextPredictor(ByWordCount(), backwards))[1:] == ["long", "mid", "short"]
