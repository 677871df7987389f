"""The drift guard: a ranker that ranks worse than prompt length on served traffic steps aside,
keeps being judged in the shadow, and takes over again once it ranks better."""

from __future__ import annotations

from collections.abc import Sequence

from llmfleet.core.prediction import LengthEstimate, PredictionInput
from llmfleet.ranker.drift import GuardedPredictor


class Scripted:
    """Scores by a rule of the true length (tests only): +1 ranks perfectly, -1 exactly backwards."""

    name = "scripted"
    reestimates = True

    def __init__(self) -> None:
        self.sign = 1.0

    def predict(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]:
        return [LengthEstimate(self.sign * (it.true_output_tokens or 0), 100.0, 200.0, it.generated_tokens) for it in items]


def _serve(guard: GuardedPredictor, n: int, start: int = 0) -> list[LengthEstimate]:
    out = []
    for i in range(start, start + n):
        truth = (i * 37) % 101 + 1
        prompt_tokens = (i * 53) % 97 + 1  # unrelated to the truth: the baseline ranks at chance
        (est,) = guard.predict([PredictionInput(f"r{i}", prompt_tokens, "p", true_output_tokens=truth)])
        out.append(est)
        guard.observe(f"r{i}", truth)
    return out


def test_a_good_ranker_is_used_and_its_tau_reported() -> None:
    guard = GuardedPredictor(Scripted(), window=100, min_samples=20)
    _serve(guard, 50)
    assert guard.tau == 1.0 and abs(guard.baseline_tau or 0) < 0.3 and not guard.fallback
    assert guard.reestimates


def test_a_drifted_ranker_falls_back_to_prompt_length_and_recovers() -> None:
    ranker = Scripted()
    guard = GuardedPredictor(ranker, window=40, min_samples=20)
    _serve(guard, 40)
    ranker.sign = -1.0  # a new model behind the fleet: now exactly wrong
    _serve(guard, 40, start=40)
    assert guard.fallback and (guard.tau or 0) < 0 and not guard.reestimates
    (est,) = guard.predict([PredictionInput("x", 77, "p", true_output_tokens=5)])
    assert est.score == 77.0, "admission estimates come from prompt length while in fallback"
    ranker.sign = 1.0  # judged in the shadow all along, so it can win its place back
    _serve(guard, 40, start=80)
    assert not guard.fallback and guard.tau == 1.0


def test_fewer_than_min_samples_never_fall_back_and_forgotten_requests_are_not_judged() -> None:
    ranker = Scripted()
    ranker.sign = -1.0
    guard = GuardedPredictor(ranker, window=100, min_samples=50)
    _serve(guard, 30)
    assert not guard.fallback, "30 requests are too few to judge"
    guard.predict([PredictionInput("gone", 5, "p", true_output_tokens=3)])
    guard.forget("gone")
    guard.observe("gone", 3)
    assert len(guard.window) == 30


def test_reestimates_are_not_judged_by_the_window() -> None:
    guard = GuardedPredictor(Scripted(), window=100, min_samples=1)
    guard.predict([PredictionInput("r", 5, "p", true_output_tokens=9, generated_tokens=32, generated_text="so far")])
    guard.observe("r", 9)
    assert len(guard.window) == 0
