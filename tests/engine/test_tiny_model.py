"""The tiny model is deterministic and loadable."""

from __future__ import annotations

import json
from pathlib import Path

from llmfleet.engine.tiny_model import VOCAB_SIZE, digest, make_tiny_model


def test_same_seed_same_files_and_other_seed_differs(tmp_path: Path) -> None:
    a = make_tiny_model(tmp_path / "a", seed=7)
    b = make_tiny_model(tmp_path / "b", seed=7)
    c = make_tiny_model(tmp_path / "c", seed=8)
    assert digest(a) == digest(b)
    assert digest(a)["model.safetensors"] != digest(c)["model.safetensors"]
    config = json.loads((a / "config.json").read_text())
    # vLLM's CPU attention only accepts some head sizes; 64 is one of them.
    assert config["head_dim"] == 64 and config["num_key_value_heads"] == 2
    assert config["vocab_size"] == VOCAB_SIZE


def test_tokenizer_round_trips_text(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = "Slice-level scheduling, 128 tokens at a time!"
    ids = tok.encode(text, add_special_tokens=False)
    assert all(0 <= i < VOCAB_SIZE for i in ids)
    assert tok.decode(ids) == text
