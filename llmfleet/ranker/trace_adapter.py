"""Ranker predictions for requests that carry no prompt text (Azure and Mooncake traces).

Trace requests have only `prompt_tokens` and, in simulation, `true_output_tokens`. To give the
simulator the ranker's *real, measured* noise rather than a stand-in noise model, each such
request is given a held-out alpaca_eval prompt (one the ranker never trained on) whose true
output length sits at the same quantile of its own distribution, and gets the ranker's
prediction for that real prompt. The length estimate is mapped back to the trace's scale
quantile-to-quantile, so memory-aware policies see trace-sized numbers.

`RankerPredictor` (what `llmfleet.ranker.load_predictor` returns) routes each request:
prompt text -> the ranker; no text but a true length -> this adapter; neither -> a score from
prompt length alone. All three give scores on one scale, so they can share a queue.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence

import numpy as np

from llmfleet.core.prediction import LengthEstimate, PredictionInput
from llmfleet.ranker.model import LearnedRanker

RUNNING_REFERENCE_CAP = 8192


class TraceAdapter:
    """Maps a trace request to a held-out prompt with the same output-length quantile."""

    def __init__(
        self,
        ranker: LearnedRanker,
        pool: Sequence[dict],
        reference_lengths: Sequence[int] | None = None,
        neighbours: int = 5,
        seed: int = 0,
    ) -> None:
        if len(pool) < 2:
            raise ValueError("the trace adapter needs at least 2 held-out prompts (train with --holdout > 0)")
        ordered = sorted(pool, key=lambda r: r["output_tokens"])
        self.pool_prompts = [r["prompt"] for r in ordered]
        self.pool_tokens = np.array([r["output_tokens"] for r in ordered], float)
        self.pool_scores = ranker.score_texts(self.pool_prompts)
        self.ranker = ranker
        self.neighbours = max(1, neighbours)
        self.seed = seed
        self._reference: list[float] = []
        self._reference_array = np.zeros(0)
        self._fixed_reference = False
        if reference_lengths is not None:
            self.fit_reference(reference_lengths)

    def fit_reference(self, lengths: Sequence[int]) -> None:
        """Use the whole trace's output lengths as the distribution to match quantiles in."""
        if len(lengths) == 0:
            raise ValueError("reference lengths are empty")
        self._reference = sorted(float(x) for x in lengths)
        self._reference_array = np.asarray(self._reference)
        self._fixed_reference = True

    def _quantile_of(self, tokens: float) -> float:
        if not self._fixed_reference:
            # Without a reference, learn the trace's distribution from the requests seen so far.
            bisect.insort(self._reference, float(tokens))
            if len(self._reference) > RUNNING_REFERENCE_CAP:
                del self._reference[:: 2]  # thin evenly; quantiles stay representative
        ref = self._reference
        lo = bisect.bisect_left(ref, tokens)
        hi = bisect.bisect_right(ref, tokens)
        return ((lo + hi) / 2) / max(len(ref), 1)

    def _pick(self, request_id: str, quantile: float) -> int:
        n = len(self.pool_tokens)
        centre = int(round(quantile * (n - 1)))
        half = self.neighbours // 2
        lo, hi = max(0, centre - half), min(n - 1, centre + half)
        # Deterministic per request, so a rerun of a simulation sees the same noise.
        h = int.from_bytes(hashlib.sha256(f"{self.seed}:{request_id}".encode()).digest()[:8], "big")
        return lo + h % (hi - lo + 1)

    def _to_trace_scale(self, pool_tokens: np.ndarray) -> np.ndarray:
        if not self._reference:
            return pool_tokens
        q = np.searchsorted(self.pool_tokens, pool_tokens, side="right") / len(self.pool_tokens)
        ref = self._reference_array if self._fixed_reference else np.asarray(self._reference)
        return np.quantile(ref, np.clip(q, 0.0, 1.0))

    def matched_prompt(self, item: PredictionInput) -> str:
        """The held-out prompt this request stands in for (for inspection and tests)."""
        if item.true_output_tokens is None:
            raise ValueError(f"request {item.request_id}: the trace adapter needs true_output_tokens")
        return self.pool_prompts[self._pick(item.request_id, self._quantile_of(item.true_output_tokens))]

    def predict(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]:
        picks = []
        for item in items:
            if item.true_output_tokens is None:
                raise ValueError(f"request {item.request_id}: the trace adapter needs true_output_tokens")
            picks.append(self._pick(item.request_id, self._quantile_of(item.true_output_tokens)))
        scores = self.pool_scores[picks]
        base = self.ranker.estimate(scores)
        expected = self._to_trace_scale(np.array([e.expected_tokens for e in base]))
        upper = self._to_trace_scale(np.array([e.upper_tokens for e in base]))
        upper = np.maximum(upper, expected)
        return [LengthEstimate(float(s), float(a), float(b)) for s, a, b in zip(scores, expected, upper, strict=True)]


class RankerPredictor:
    """The predictor `load_predictor` returns: text, trace-only and bare requests, one score scale."""

    name = "ltr-lightgbm"

    def __init__(self, ranker: LearnedRanker, adapter: TraceAdapter | None) -> None:
        self.ranker = ranker
        self.adapter = adapter

    @property
    def reestimates(self) -> bool:
        return self.ranker.reestimates

    def fit_reference(self, lengths: Sequence[int]) -> None:
        """Optional: the trace's output lengths, so quantile matching is exact from the first request."""
        if self.adapter is not None:
            self.adapter.fit_reference(lengths)

    def predict(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]:
        out: list[LengthEstimate | None] = [None] * len(items)
        text = [i for i, it in enumerate(items) if it.prompt_text is not None]
        traced = [
            i for i, it in enumerate(items)
            if it.prompt_text is None and it.true_output_tokens is not None and self.adapter is not None
        ]
        rest = sorted(set(range(len(items))) - set(text) - set(traced))
        for group, predictor in ((text, self.ranker), (traced, self.adapter), (rest, self.ranker)):
            if group and predictor is not None:
                for i, est in zip(group, predictor.predict([items[i] for i in group]), strict=True):
                    out[i] = est
        return [e for e in out if e is not None]
