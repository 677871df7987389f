"""A ranker a fleet can trust: it measures itself on served traffic and steps aside when it is
worse than ordering by prompt length.

`GuardedPredictor` wraps the dispatcher's predictor. At admission it scores every request twice,
with the ranker and with the prompt-length baseline, and remembers both scores. When a request
ends naturally (its true length is then known), `observe` adds (both scores, true length) to a
sliding window, and Kendall's tau of each against the truth is recomputed. While the ranker's tau
is below the baseline's over at least `min_samples` requests (a new model behind the fleet, a
new traffic mix), admission estimates come from the baseline; the ranker keeps being scored in
the shadow, so it takes over again as soon as it ranks better. The dispatcher exports both taus
and the fallback flag as Prometheus gauges.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence

from llmfleet.core.prediction import LengthEstimate, LengthPredictor, PredictionInput
from llmfleet.ranker.baseline import PromptLengthPredictor
from llmfleet.ranker.metrics import kendall_tau

MAX_PENDING = 100_000  # admitted requests whose scores wait for their outcome (bounded memory)


class GuardedPredictor:
    def __init__(
        self,
        ranker: LengthPredictor,
        baseline: LengthPredictor | None = None,
        window: int = 500,
        min_samples: int = 100,
    ) -> None:
        self.ranker = ranker
        self.baseline = baseline or PromptLengthPredictor()
        self.name = getattr(ranker, "name", "ranker")
        self.min_samples = min_samples
        self.window: deque[tuple[float, float, int]] = deque(maxlen=window)  # (ranker, baseline, truth)
        self._pending: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.tau: float | None = None
        self.baseline_tau: float | None = None
        self.fallback = False

    @property
    def reestimates(self) -> bool:
        return not self.fallback and bool(getattr(self.ranker, "reestimates", False))

    def predict(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]:
        mine = self.ranker.predict(items)
        fresh = [i for i, it in enumerate(items) if it.generated_tokens == 0]
        if not fresh:
            return mine  # re-estimates: the window judges admission estimates only
        theirs = self.baseline.predict([items[i] for i in fresh])
        for i, base in zip(fresh, theirs, strict=True):
            self._pending[items[i].request_id] = (mine[i].score, base.score)
            if len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
        if self.fallback:
            out = list(mine)
            for i, base in zip(fresh, theirs, strict=True):
                out[i] = base
            return out
        return mine

    def observe(self, request_id: str, output_tokens: int) -> None:
        """A request ended naturally with `output_tokens`: judge both predictors on it."""
        scores = self._pending.pop(request_id, None)
        if scores is None:
            return
        self.window.append((scores[0], scores[1], output_tokens))
        if len(self.window) >= 2:
            truth = [t for _, _, t in self.window]
            self.tau = kendall_tau([r for r, _, _ in self.window], truth)
            self.baseline_tau = kendall_tau([b for _, b, _ in self.window], truth)
        self.fallback = len(self.window) >= self.min_samples and (self.tau or 0.0) < (self.baseline_tau or 0.0)

    def forget(self, request_id: str) -> None:
        """A request ended without a natural length (cancelled, failed, cut by max_tokens)."""
        self._pending.pop(request_id, None)

    # The wrapped predictor's other duties (an OnlineRanker's learning) pass through.
    def __getattr__(self, name: str) -> object:
        return getattr(self.ranker, name)
