"""The learned output-length ranker: orders requests by expected answer length (~ SJF).

Public entry points (heavy imports happen only when they are called):

* `load_predictor(path)` -> a `LengthPredictor` for the simulator and the dispatcher. It scores
  requests with prompt text with the trained model, trace requests without text through the
  trace adapter (a matched held-out prompt), and falls back to prompt length when `path` is
  None (cold start).
* `llmfleet ranker train|eval|...` (see `cli.py`) builds and measures artifacts.
* `llmfleet.ranker.online.OnlineRanker` records completions and retrains in the background.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmfleet.core.prediction import LengthPredictor

__all__ = ["load_predictor"]


def load_predictor(path: str | Path | None, *, trace_seed: int = 0) -> LengthPredictor:
    """The predictor stored at `path`, or the prompt-length cold-start predictor when `path` is None.

    Raises `llmfleet.ranker.model.RankerArtifactError` with a readable message when `path` is
    not a usable artifact (missing, corrupt, wrong version): a typo must not silently degrade
    scheduling to the fallback.
    """
    if path is None or str(path) == "":
        from llmfleet.ranker.baseline import PromptLengthPredictor

        return PromptLengthPredictor()
    from llmfleet.ranker.model import LearnedRanker, read_holdout_pool
    from llmfleet.ranker.trace_adapter import RankerPredictor, TraceAdapter

    ranker = LearnedRanker.load(path)
    pool = read_holdout_pool(path)
    adapter = TraceAdapter(ranker, pool, seed=trace_seed) if len(pool) >= 2 else None
    return RankerPredictor(ranker, adapter)
