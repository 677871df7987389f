"""Text-less trace requests get the ranker's real noise through matched held-out prompts."""

from __future__ import annotations

import numpy as np
import pytest

from llmfleet.core.prediction import PredictionInput
from llmfleet.ranker import load_predictor
from llmfleet.ranker.metrics import kendall_tau
from llmfleet.ranker.trace_adapter import RankerPredictor, TraceAdapter


@pytest.fixture(scope="module")
def artifact(trained, tmp_path_factory):
    return trained.ranker.save(tmp_path_factory.mktemp("trace") / "art", trained.train_keys, trained.holdout_pool)


def _trace(n: int, seed: int = 0) -> list[PredictionInput]:
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(np.log(130), 0.9, n).astype(int) + 1  # Azure-conv-like output lengths
    return [PredictionInput(f"req-{i}", int(rng.integers(100, 3000)), None, int(n_out)) for i, n_out in enumerate(lengths)]


def test_trace_requests_are_ranked_with_the_rankers_measured_quality(artifact, trained):
    predictor = load_predictor(artifact)
    assert isinstance(predictor, RankerPredictor) and predictor.adapter is not None
    trace = _trace(600)
    truth = [r.true_output_tokens for r in trace]
    predictor.fit_reference(truth)
    estimates = predictor.predict(trace)
    tau = kendall_tau([e.score for e in estimates], truth)
    # The pool tau is the ranker's real held-out quality; the trace inherits it, not an oracle.
    pool_tau = kendall_tau(predictor.adapter.pool_scores, predictor.adapter.pool_tokens)
    assert 0.15 < tau < 0.9
    assert abs(tau - pool_tau) < 0.15
    # Estimates are on the trace's scale (median ~130), not alpaca's (~460).
    assert 40 < np.median([e.expected_tokens for e in estimates]) < 400
    assert all(e.upper_tokens >= e.expected_tokens for e in estimates)


def test_matching_follows_the_output_length_quantile_and_is_deterministic(artifact):
    predictor = load_predictor(artifact)
    adapter = predictor.adapter
    trace = _trace(300, seed=2)
    adapter.fit_reference([r.true_output_tokens for r in trace])
    shortest = min(trace, key=lambda r: r.true_output_tokens)
    longest = max(trace, key=lambda r: r.true_output_tokens)
    pool_len = dict(zip(adapter.pool_prompts, adapter.pool_tokens, strict=True))
    assert pool_len[adapter.matched_prompt(shortest)] < np.median(adapter.pool_tokens) < pool_len[adapter.matched_prompt(longest)]
    again = TraceAdapter(adapter.ranker, [{"prompt": p, "output_tokens": int(t)} for p, t in pool_len.items()])
    again.fit_reference([r.true_output_tokens for r in trace])
    assert again.predict(trace[:20]) == adapter.predict(trace[:20])


def test_mixed_batch_text_trace_and_bare_requests(artifact):
    predictor = load_predictor(artifact)
    items = [
        PredictionInput("t", 10, "Write a detailed essay on the history of Rome."),
        PredictionInput("s", 800, None, 50),
        PredictionInput("b", 200),
    ]
    out = predictor.predict(items)
    assert len(out) == 3 and all(np.isfinite(e.score) for e in out)
    assert out[0].score == predictor.ranker.predict(items[:1])[0].score
