"""Shared ranker fixtures: the Llama-3-8B alpaca_eval slice, one token table, one trained model.

Building the distilled token table for the whole vocabulary takes up to a minute on 2 shared
cores; when no cached table exists, tests distil only the tokens of the alpaca_eval prompts
(plus the few test strings), which is the same code path on fewer rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmfleet.ranker.data import Example, load_examples
from llmfleet.ranker.text import (
    StaticEmbedder,
    count_tokens,
    distill_static_table,
    static_table_cache_path,
    token_ids,
)
from llmfleet.ranker.train import TrainOptions, TrainResult, train_ranker

LLAMA = "Meta-Llama-3-8B-Instruct"
EXTRA_TEXT = ["Write a detailed essay on the history of Rome.", "What is 2+2?", "hello world"]


@pytest.fixture(scope="session")
def alpaca_dir(shared_data: Path) -> Path:
    return shared_data / "alpaca_eval"


@pytest.fixture(scope="session")
def llama_file(alpaca_dir: Path) -> Path:
    return alpaca_dir / LLAMA / "model_outputs.json"


@pytest.fixture(scope="session")
def llama_examples(llama_file: Path) -> list[Example]:
    return load_examples([llama_file], count_tokens)


@pytest.fixture(scope="session")
def embedder(llama_examples: list[Example]) -> StaticEmbedder:
    cached = static_table_cache_path()
    if cached.is_file():
        return StaticEmbedder(np.load(cached).astype(np.float32))
    ids = [i for seq in token_ids([ex.prompt for ex in llama_examples] + EXTRA_TEXT) for i in seq]
    table = distill_static_table(progress=False, only_ids=ids).astype(np.float16).astype(np.float32)
    return StaticEmbedder(table)


FAST = {"folds": 3, "max_rounds": 400, "progress": False, "remaining_rounds": 200}


@pytest.fixture(scope="session")
def trained(llama_examples: list[Example], embedder: StaticEmbedder) -> TrainResult:
    """One model on ~75% of the Llama-3-8B prompts; the other 25% are held out."""
    return train_ranker(llama_examples, TrainOptions(holdout_fraction=0.25, seed=1, **FAST), embedder=embedder)
