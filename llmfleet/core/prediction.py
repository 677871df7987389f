"""The contract between output-length predictors and the schedulers that use them.

A predictor is consulted when a request is admitted, and again at slice boundaries with the text
generated so far (a re-estimate of what is left), by the simulator or the live dispatcher. The
latest estimate is stored on the request, so policies stay pure and never call a model themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol


@dataclass(frozen=True)
class PredictionInput:
    """What is known about a request when it arrives."""

    request_id: str
    prompt_tokens: int
    prompt_text: str | None = None
    # Only simulators know this; stand-in noise models use it, learned rankers must not.
    true_output_tokens: int | None = None
    # For a re-estimate between slices: what has been generated so far.
    generated_tokens: int = 0
    generated_text: str | None = None


@dataclass(frozen=True)
class LengthEstimate:
    """A ranking score plus a calibrated length estimate for memory-aware policies."""

    score: float  # larger means a longer expected output; only the order across requests matters
    expected_tokens: float  # calibrated point estimate of output tokens (e.g. the median)
    upper_tokens: float  # a high quantile (e.g. p90) of output tokens, for memory reservation
    # The generated tokens it was conditioned on: 0 for a guess from the prompt alone. Expected
    # and upper tokens are totals either way (generated so far included).
    at_generated: int = 0


class LengthPredictor(Protocol):
    """Anything that ranks requests by expected output length."""

    name: str

    def predict(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]: ...


@lru_cache(maxsize=4096)  # a frozen value, the same for every request of that length
def exact_estimate(max_tokens: int) -> LengthEstimate:
    """The estimate of a request whose length is fixed (`ignore_eos` with `max_tokens`): nothing to predict."""
    n = float(max_tokens)
    return LengthEstimate(score=n, expected_tokens=n, upper_tokens=n)
