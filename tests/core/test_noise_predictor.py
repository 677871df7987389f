"""The stand-in length predictor hits the Kendall's tau it is set to."""

from __future__ import annotations

import math
import random

import pytest

from llmfleet.core.noise_predictor import NoisyOraclePredictor, kendall_tau
from llmfleet.core.prediction import PredictionInput


def _lengths(n: int = 3000, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [max(1, int(math.exp(rng.gauss(math.log(130), 1.1)))) for _ in range(n)]


def _items(lengths: list[int]) -> list[PredictionInput]:
    return [PredictionInput(f"r{i}", 100, true_output_tokens=n) for i, n in enumerate(lengths)]


@pytest.mark.parametrize("tau", [0.0, 0.3, 0.6, 0.9, 1.0])
def test_measured_tau_matches_the_setting(tau: float) -> None:
    lengths = _lengths()
    pred = NoisyOraclePredictor.fitted(lengths, tau=tau, seed=7)
    scores = [e.score for e in pred.predict(_items(lengths))]
    assert kendall_tau(scores, lengths) == pytest.approx(tau, abs=0.05)


def test_estimates_are_deterministic_per_request_and_ordered() -> None:
    lengths = _lengths(200)
    pred = NoisyOraclePredictor.fitted(lengths, tau=0.6, seed=3)
    a = pred.predict(_items(lengths))
    b = pred.predict(list(reversed(_items(lengths))))
    assert a == list(reversed(b))  # independent of batch order
    for e in a:
        assert 1.0 <= e.expected_tokens <= e.upper_tokens
    other_seed = NoisyOraclePredictor.fitted(lengths, tau=0.6, seed=4).predict(_items(lengths))
    assert [e.score for e in other_seed] != [e.score for e in a]


def test_perfect_predictor_recovers_lengths_roughly() -> None:
    lengths = _lengths(500)
    pred = NoisyOraclePredictor.fitted(lengths, tau=1.0)
    for n, e in zip(lengths, pred.predict(_items(lengths)), strict=True):
        assert e.expected_tokens == pytest.approx(max(1.0, n), rel=1e-6)


def test_needs_true_lengths_and_valid_tau() -> None:
    with pytest.raises(ValueError, match="true_output_tokens"):
        NoisyOraclePredictor().predict([PredictionInput("x", 5)])
    with pytest.raises(ValueError, match="tau"):
        NoisyOraclePredictor(tau=1.5)


def test_re_estimates_follow_the_measured_tau_curve_on_the_remaining_length() -> None:
    base = _lengths()
    pred = NoisyOraclePredictor.fitted(base, tau=0.3, seed=7)
    pred = NoisyOraclePredictor(tau=0.3, seed=7, log_mean=pred.log_mean, log_std=pred.log_std,
                                tau_curve=((32, 0.5), (64, 0.8)))  # fmt: skip
    assert pred.reestimates and pred.tau_at(0) == 0.3 and pred.tau_at(16) == pytest.approx(0.4)
    assert pred.tau_at(48) == pytest.approx(0.65) and pred.tau_at(500) == 0.8
    for k, tau in ((32, 0.5), (64, 0.8)):
        lengths = [k + n for n in base]  # what is left after k tokens is distributed as before
        items = [PredictionInput(f"r{i}", 100, true_output_tokens=n, generated_tokens=k) for i, n in enumerate(lengths)]
        est = pred.predict(items)
        assert all(e.at_generated == k and e.expected_tokens > k for e in est)
        assert kendall_tau([e.score for e in est], base) == pytest.approx(tau, abs=0.05)
    assert not NoisyOraclePredictor(tau=0.3).reestimates, "without a curve: one estimate at admission"


def test_the_curve_comes_from_a_ranker_eval(tmp_path) -> None:
    import json

    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"kendall_tau": 0.37, "remaining_tau": {"0": 0.37, "32": 0.41, "64": 0.46}}))
    pred = NoisyOraclePredictor.from_eval(str(path), _lengths(200), seed=3)
    assert pred.tau == 0.37 and pred.tau_curve == ((32, 0.41), (64, 0.46))
