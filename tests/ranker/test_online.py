"""Online learning: bounded recording, tau rising with traffic, scheduled retrain, lock-free swap."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from llmfleet.core.clock import FakeClock, wait_for_condition
from llmfleet.core.prediction import PredictionInput
from llmfleet.ranker.baseline import PromptLengthPredictor
from llmfleet.ranker.data import split_by_prompt
from llmfleet.ranker.metrics import kendall_tau
from llmfleet.ranker.model import LearnedRanker
from llmfleet.ranker.online import CompletionRecorder, OnlineRanker, make_trainer
from llmfleet.ranker.text import count_tokens

from .conftest import FAST


def test_recorder_memory_is_bounded():
    for policy in ("reservoir", "recent"):
        rec = CompletionRecorder(capacity=50, policy=policy, max_prompt_chars=10)
        for i in range(1000):
            rec.record(f"prompt number {i}", 3, i)
        assert len(rec) == 50 and rec.seen == 1000
        sample = rec.snapshot()
        assert all(len(c.prompt_text) <= 10 for c in sample)
        if policy == "recent":
            assert [c.output_tokens for c in sample] == list(range(950, 1000))
        else:  # a uniform sample of all history, not just the tail
            assert np.mean([c.output_tokens for c in sample]) < 800
    with pytest.raises(ValueError, match="prompt text"):
        rec.record("", 1, 1)


def _held_tau(predictor, held) -> float:
    items = [PredictionInput(str(i), n, e.prompt) for i, (e, n) in
             enumerate(zip(held, count_tokens([e.prompt for e in held]), strict=True))]
    return kendall_tau([x.score for x in predictor.predict(items)], [e.output_tokens for e in held])


def test_tau_rises_as_served_traffic_flows_in(llama_examples, embedder):
    train, held = split_by_prompt(llama_examples, 0.25, seed=1)
    traffic = [train[i] for i in np.random.default_rng(0).permutation(len(train))]
    ranker = OnlineRanker(FakeClock(), min_examples=60, trainer=make_trainer(embedder=embedder, **FAST))
    taus = [_held_tau(ranker, held)]  # cold start: prompt length
    assert isinstance(ranker.live, PromptLengthPredictor)
    fed = 0
    for upto in (60, 200, len(traffic)):
        for ex in traffic[fed:upto]:
            ranker.record_completion(ex.prompt, len(ex.prompt.split()), ex.output_tokens)
        fed = upto
        assert ranker.retrain_now()
        taus.append(_held_tau(ranker, held))
    assert isinstance(ranker.live, LearnedRanker) and ranker.version == 3
    assert taus[-1] > taus[0] + 0.25, taus
    assert taus[-1] > taus[1], taus
    assert taus[-1] > 0.25, taus


def test_the_remaining_length_model_is_learned_from_served_answers(llama_examples, embedder):
    """Served answers (their text kept) teach the swapped-in model to re-estimate what is left,
    judged on prompts it never saw; answers recorded without text teach it nothing of the kind."""
    from llmfleet.ranker.evaluate import evaluate_remaining

    train, held = split_by_prompt(llama_examples, 0.25, seed=1)
    with_text = OnlineRanker(FakeClock(), min_examples=60, trainer=make_trainer(embedder=embedder, **FAST))
    lengths_only = OnlineRanker(FakeClock(), min_examples=60, trainer=make_trainer(embedder=embedder, **FAST))
    for ex in train:
        with_text.record_completion(ex.prompt, len(ex.prompt.split()), ex.output_tokens, output_text=ex.output)
        lengths_only.record_completion(ex.prompt, len(ex.prompt.split()), ex.output_tokens)
    assert not with_text.reestimates, "the cold-start baseline cannot read generated text"
    assert with_text.retrain_now() and lengths_only.retrain_now()
    assert with_text.reestimates and not lengths_only.reestimates
    result = evaluate_remaining(with_text.live, held, None, [0, 32, 64])  # type: ignore[arg-type]
    taus, base = result["remaining_tau"], result["remaining_tau_prompt_only"]
    for k, gain in (("32", 0.02), ("64", 0.05)):  # as the offline model (test_remaining.py)
        assert taus[k] > base[k] + gain, f"served answers must sharpen the estimate after {k} tokens: {taus} vs {base}"


def test_an_answer_too_long_to_keep_is_recorded_without_its_text():
    rec = CompletionRecorder(capacity=10, max_output_chars=20)
    rec.record("p", 1, 3, output_text="short answer")
    rec.record("q", 1, 40, output_text="a much longer answer than twenty characters")
    assert [c.output_text for c in rec.snapshot()] == ["short answer", None]


def test_cold_start_learns_length_quantiles_before_enough_data():
    ranker = OnlineRanker(FakeClock(), min_examples=100)
    for n in range(1, 51):
        ranker.record_completion(f"p{n}", 5, n * 10)
    assert not ranker.retrain_now()
    est = ranker.predict([PredictionInput("a", 5)])[0]
    assert est.expected_tokens == pytest.approx(255.0) and est.upper_tokens == pytest.approx(451.0)


async def test_background_retrain_follows_the_clock(llama_examples, embedder):
    clock = FakeClock()
    ranker = OnlineRanker(clock, retrain_every_s=300, min_examples=60,
                          trainer=make_trainer(embedder=embedder, **FAST))
    task = asyncio.create_task(ranker.run())
    try:
        for ex in llama_examples[:120]:
            ranker.record_completion(ex.prompt, 10, ex.output_tokens)
        await asyncio.sleep(0)  # let the loop reach its first clock.sleep
        clock.advance(299)
        await asyncio.sleep(0)
        assert ranker.version == 0  # not due yet
        clock.advance(1)
        await wait_for_condition(lambda: ranker.version == 1, timeout=120, what="first scheduled retrain")
        assert ranker.last_retrain_at == 300
        # Nothing new recorded: the next tick does not retrain.
        clock.advance(300)
        await asyncio.sleep(0.05)
        assert ranker.version == 1
    finally:
        ranker.stop()
        task.cancel()


def test_readers_never_block_during_a_retrain():
    release = threading.Event()
    started = threading.Event()
    new_model = PromptLengthPredictor(111.0, 222.0)

    def slow_trainer(examples):
        started.set()
        assert release.wait(30)
        return new_model

    ranker = OnlineRanker(FakeClock(), min_examples=5, trainer=slow_trainer)
    for n in range(10):
        ranker.record_completion(f"p{n}", 3, 10)
    worker = threading.Thread(target=ranker.retrain_now)
    worker.start()
    assert started.wait(30)
    # Training is in progress and holds its lock; predictions still answer from the old model.
    for _ in range(100):
        assert ranker.predict([PredictionInput("x", 3)])[0].expected_tokens != 111.0
    assert not ranker.retrain_now()  # a second retrain does not queue behind the first
    release.set()
    worker.join(30)
    assert ranker.live is new_model and ranker.version == 1
    assert ranker.predict([PredictionInput("x", 3)])[0].expected_tokens == 111.0


def test_failed_retrain_keeps_serving_the_old_model():
    def broken(examples):
        raise RuntimeError("boom")

    ranker = OnlineRanker(FakeClock(), min_examples=1, trainer=broken)
    ranker.record_completion("p", 3, 10)
    old = ranker.live
    assert not ranker.retrain_now()
    assert ranker.live is old and "boom" in (ranker.last_error or "")
    assert ranker.metrics.registry.get_sample_value("llmfleet_ranker_retrains_total", {"outcome": "failed"}) == 1


def test_metrics_on_a_shared_registry():
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    ranker = OnlineRanker(FakeClock(), min_examples=2, trainer=lambda ex: PromptLengthPredictor(50.0, 90.0),
                          registry=registry)
    for n in range(3):
        ranker.record_completion(f"p{n}", 3, 10)
    assert ranker.retrain_now()
    assert registry.get_sample_value("llmfleet_ranker_recorded_completions_total") == 3
    assert registry.get_sample_value("llmfleet_ranker_sample_size") == 3
    assert registry.get_sample_value("llmfleet_ranker_model_version") == 1
    assert registry.get_sample_value("llmfleet_ranker_retrains_total", {"outcome": "swapped"}) == 1
