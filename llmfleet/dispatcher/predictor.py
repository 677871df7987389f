"""Output-length predictions for the live dispatcher, at admission and (with a remaining-length
model) again at slice boundaries (`estimates.py`).

* A request with `ignore_eos` generates exactly `max_tokens` tokens: its length is known, so
  it gets an exact estimate and no predictor is asked (`llmfleet.core.prediction.exact_estimate`).
* Otherwise the learned ranker answers: `llmfleet.ranker.load_predictor(path)` with the
  scheduling config's `ranker:` artifact, or the ranker's cold-start prompt-length predictor
  when no artifact is configured.
* With online learning on (`online_every_s`), an `llmfleet.ranker.online.OnlineRanker` wraps
  that predictor: requests that end naturally (EOS/stop, not the max_tokens cap, which would
  censor their length) and came with prompt text are recorded, and a retrained model is swapped
  in every `online_every_s` seconds in a worker thread.
* Either is wrapped in a `llmfleet.ranker.drift.GuardedPredictor`, which measures its Kendall
  tau on served requests and falls back to prompt length while that ranks better.
"""

from __future__ import annotations

import logging

from llmfleet.core.clock import Clock
from llmfleet.core.prediction import LengthPredictor

log = logging.getLogger(__name__)


def load_predictor(path: str | None, *, clock: Clock | None = None, online_every_s: float = 0.0) -> LengthPredictor:
    """The ranker for the dispatcher (raises a readable error for a bad artifact path)."""
    from llmfleet.ranker import load_predictor as load_ranker
    from llmfleet.ranker.drift import GuardedPredictor

    base = load_ranker(path)
    if online_every_s <= 0:
        # A trained ranker is watched on served traffic; prompt length needs no watching.
        return GuardedPredictor(base) if path else base
    if clock is None:
        raise ValueError("online learning needs the dispatcher's clock")
    from llmfleet.ranker.online import OnlineRanker

    log.info("online ranker on: retraining every %.0f s from served requests", online_every_s)
    return GuardedPredictor(OnlineRanker(clock, initial=base, retrain_every_s=online_every_s))
