"""The cold-start predictor: order by prompt length, estimate length from observed quantiles.

Used when no ranker artifact exists yet or too few completions have been recorded to train
one. It needs no text and no extra packages, and it implements `LengthPredictor`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmfleet.core.prediction import LengthEstimate, PredictionInput

DEFAULT_EXPECTED_TOKENS = 256.0
DEFAULT_UPPER_TOKENS = 1024.0


class PromptLengthPredictor:
    """Longer prompts are assumed to get longer answers (weak, but free and never worse than FCFS)."""

    name = "prompt-length"

    def __init__(
        self, expected_tokens: float = DEFAULT_EXPECTED_TOKENS, upper_tokens: float = DEFAULT_UPPER_TOKENS
    ) -> None:
        if expected_tokens <= 0 or upper_tokens < expected_tokens:
            raise ValueError("need 0 < expected_tokens <= upper_tokens")
        self.expected_tokens = float(expected_tokens)
        self.upper_tokens = float(upper_tokens)

    @classmethod
    def from_lengths(cls, output_tokens: Sequence[int]) -> PromptLengthPredictor:
        """Median and p90 of observed output lengths as the (constant) length estimate."""
        if len(output_tokens) == 0:
            return cls()
        arr = np.asarray(output_tokens, float)
        median = max(float(np.median(arr)), 1.0)
        return cls(median, max(float(np.percentile(arr, 90)), median))

    def fit_reference(self, lengths: Sequence[int]) -> None:
        """Take the length estimate from a trace's output lengths (same call as `RankerPredictor`)."""
        fitted = PromptLengthPredictor.from_lengths(lengths)
        self.expected_tokens, self.upper_tokens = fitted.expected_tokens, fitted.upper_tokens

    def predict(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]:
        return [
            LengthEstimate(float(item.prompt_tokens), self.expected_tokens, self.upper_tokens) for item in items
        ]
