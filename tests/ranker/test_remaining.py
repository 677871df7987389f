"""Remaining-length prediction: prefix features, the model trained from real answer prefixes,
re-estimates through `predict`, and the artifact round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmfleet.core.prediction import PredictionInput
from llmfleet.ranker.data import Example
from llmfleet.ranker.evaluate import evaluate_remaining
from llmfleet.ranker.model import LearnedRanker
from llmfleet.ranker.remaining import PREFIX_FEATURES, cut_after, prefix_features, training_triples
from llmfleet.ranker.text import token_offsets
from llmfleet.ranker.train import TrainResult


def _feature(prompt: str, prefix: str, name: str, k: int = 10) -> float:
    return prefix_features(prompt, prefix, k)[PREFIX_FEATURES.index(name)]


@pytest.mark.parametrize(
    "prompt, prefix, name, value",
    [
        ("Give me 10 tips", "1. Sleep\n2. Eat\n3. Walk\n", "numbered_items", 3),
        ("Give me 10 tips", "1. Sleep\n2. Eat\n3. Walk\n", "max_item", 3),
        ("Give me 10 tips", "1. Sleep\n2. Eat\n3. Walk\n", "promised_left", 7),
        ("Name a color", "Blue.", "promised", 0),
        ("Explain", "Some text.\n\nIn conclusion, it works. Good luck", "endings", 2),
        ("Explain", "Here:\n```python\nx = 1\n", "inside_code", 1),
        ("Explain", "Here:\n```python\nx = 1\n```\n", "inside_code", 0),
        ("Explain", "- a\n- b\n* c\n", "bullets", 3),
    ],
)  # fmt: skip
def test_prefix_features(prompt: str, prefix: str, name: str, value: float) -> None:
    assert _feature(prompt, prefix, name) == value


def test_triples_cut_real_answers_after_k_tokens() -> None:
    text = "one two three four five"
    rows, prefixes, ks, remaining = training_triples([text], ks=(1, 3, 5, 8))
    assert rows == [0, 0] and ks == [1, 3] and remaining == [4, 2], "k=5 and 8 outlast the answer"
    assert prefixes == ["one", "one two three"]
    assert cut_after(text, token_offsets([text])[0], 0) == ""


def test_reestimates_read_the_prefix_and_beat_the_prompt_on_real_answers(trained: TrainResult, llama_examples) -> None:
    ranker = trained.ranker
    assert ranker.reestimates, "trained from answer texts, the artifact carries a remaining-length model"
    held = set(trained.train_keys)
    result = evaluate_remaining(ranker, llama_examples, held, [0, 32, 64])
    taus, base = result["remaining_tau"], result["remaining_tau_prompt_only"]
    assert result["remaining_rows"]["64"] < result["remaining_rows"]["0"]
    assert taus["0"] == pytest.approx(base["0"]), "k=0 is the prompt-only estimate"
    # The prefix says little after 32 tokens and much more after 64 (bench/RANKER.md: +0.06 and +0.16).
    for k, gain in (("32", 0.02), ("64", 0.05)):
        assert taus[k] > base[k] + gain, f"reading {k} generated tokens must sharpen the estimate: {taus} vs {base}"


def test_a_reestimate_is_a_total_conditioned_on_what_was_generated(trained: TrainResult) -> None:
    ranker = trained.ranker
    prompt = "Write a detailed essay on the history of Rome."
    prefix = "Rome was founded, according to legend, in 753 BC by Romulus. " * 3
    fresh, again = ranker.predict([PredictionInput("a", 12, prompt),
                                   PredictionInput("b", 12, prompt, generated_tokens=48, generated_text=prefix)])  # fmt: skip
    assert fresh.at_generated == 0 and again.at_generated == 48
    assert again.expected_tokens > 48 and again.upper_tokens >= again.expected_tokens
    # Without text there is nothing to read: the prompt-only estimate stands.
    (same,) = ranker.predict([PredictionInput("c", 12, prompt, generated_tokens=48, generated_text=None)])
    assert same.at_generated == 0 and same.score == pytest.approx(fresh.score)


def test_the_remaining_model_survives_save_and_load(trained: TrainResult, tmp_path: Path) -> None:
    items = [PredictionInput(str(i), 10, "List 5 fruits.", generated_tokens=k, generated_text="1. Apple\n2. Pear\n"[: 4 * k])
             for i, k in enumerate((1, 2, 3, 4))]  # fmt: skip
    before = trained.ranker.predict(items)
    trained.ranker.save(tmp_path / "artifact")
    loaded = LearnedRanker.load(tmp_path / "artifact")
    assert loaded.reestimates
    after = loaded.predict(items)
    assert [e.score for e in after] == pytest.approx([e.score for e in before])
    assert [e.expected_tokens for e in after] == pytest.approx([e.expected_tokens for e in before])


def test_without_answer_texts_there_is_no_remaining_model(llama_examples, embedder) -> None:
    from llmfleet.ranker.train import TrainOptions, train_ranker

    bare = [Example(ex.prompt, ex.output_tokens, ex.generator) for ex in llama_examples]
    result = train_ranker(bare, TrainOptions(folds=3, max_rounds=50, progress=False), embedder=embedder)
    assert not result.ranker.reestimates
    with pytest.raises(ValueError, match="no remaining-length model"):
        evaluate_remaining(result.ranker, llama_examples, set(result.train_keys), [32])
    assert np.isfinite(result.ranker.predict([PredictionInput("x", 3, "hi", generated_tokens=5, generated_text="hey")])[0].score)
    # Answers from elsewhere (other generators, other prompts) can teach it; held-out prompts never do.
    others = [Example(f"A new question about cats, number {i}", 60, "other-model", "Cats are great. " * 15) for i in range(3)]
    pooled = train_ranker(bare, TrainOptions(folds=3, max_rounds=50, remaining_rounds=30, progress=False),
                          embedder=embedder, remaining_examples=[*llama_examples, *others])  # fmt: skip
    assert pooled.ranker.reestimates
    info = pooled.ranker.metadata["remaining"]
    assert info["generators"] == sorted({"other-model", llama_examples[0].generator})
    trained_on = set(pooled.train_keys)
    assert info["answers"] == len(others) + sum(ex.prompt_key in trained_on for ex in llama_examples)
