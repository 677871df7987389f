"""Data loading: both formats, prompt-level splits, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmfleet.ranker.data import RankerDataError, is_holdout, load_examples, prompt_key, split_by_prompt
from llmfleet.ranker.text import count_tokens


def _jsonl(tmp_path: Path, rows: list, name: str = "d.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def test_alpaca_file_counts_output_tokens_with_the_stated_tokenizer(llama_examples):
    assert len(llama_examples) == 805
    assert {ex.generator for ex in llama_examples} == {"Meta-Llama-3-8B-Instruct"}
    # The shipped tokenizer.json truncates at 128; lengths must not be capped there.
    assert max(ex.output_tokens for ex in llama_examples) > 1000
    assert count_tokens(["hello world"]) == [2]


def test_jsonl_with_tokens_or_text(tmp_path):
    path = _jsonl(tmp_path, [
        {"prompt": "a b c", "output_tokens": 7},
        {"prompt": "d", "output": "hello world", "generator": "m1"},
    ])
    examples = load_examples([path], count_tokens)
    assert [(e.prompt, e.output_tokens, e.generator) for e in examples] == [("a b c", 7, "d"), ("d", 2, "m1")]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "", "output_tokens": 3}, "prompt is empty"),
        ({"prompt": "   \n", "output_tokens": 3}, "prompt is empty"),
        ({"output_tokens": 3}, "missing field 'prompt'"),
        ({"prompt": "x"}, "missing field 'output_tokens'"),
        ({"prompt": "x", "output_tokens": -1}, "non-negative integer"),
        ({"prompt": "x", "output_tokens": "12"}, "non-negative integer"),
        ({"prompt": 5, "output_tokens": 1}, "must be a string"),
        ("[1, 2]", "expected a JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_rows_name_file_line_and_reason(tmp_path, row, message):
    path = _jsonl(tmp_path, [{"prompt": "ok", "output_tokens": 1}, row])
    with pytest.raises(RankerDataError, match=message) as info:
        load_examples([path], count_tokens)
    assert "d.jsonl" in str(info.value)


def test_skip_invalid_keeps_the_good_rows(tmp_path):
    path = _jsonl(tmp_path, [{"prompt": "ok", "output_tokens": 1}, {"prompt": ""}, {"prompt": "fine", "output_tokens": 2}])
    assert [e.output_tokens for e in load_examples([path], count_tokens, skip_invalid=True)] == [1, 2]


def test_non_utf8_empty_missing_and_directory_files(tmp_path):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"prompt": "caf\xe9", "output_tokens": 3}\n'.encode("latin-1"))
    with pytest.raises(RankerDataError, match="not valid UTF-8"):
        load_examples([bad], count_tokens)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(RankerDataError, match="empty"):
        load_examples([empty], count_tokens)
    with pytest.raises(RankerDataError, match="no such file"):
        load_examples([tmp_path / "nope.json"], count_tokens)
    with pytest.raises(RankerDataError, match="is a directory"):
        load_examples([tmp_path], count_tokens)
    with pytest.raises(RankerDataError, match="no data files"):
        load_examples([], count_tokens)


def test_alpaca_missing_output_field(tmp_path):
    path = tmp_path / "model_outputs.json"
    path.write_text(json.dumps([{"instruction": "hi", "generator": "g"}]))
    with pytest.raises(RankerDataError, match=r"model_outputs.json\[0\]: missing field 'output_tokens'"):
        load_examples([path], count_tokens)


def test_split_is_by_prompt_across_generators(alpaca_dir):
    files = [alpaca_dir / g / "model_outputs.json" for g in ("Meta-Llama-3-8B-Instruct", "vicuna-7b-v1.5")]
    examples = load_examples(files, lambda texts: [len(t) for t in texts])
    train, held = split_by_prompt(examples, 0.2, seed=3)
    train_keys, held_keys = {e.prompt_key for e in train}, {e.prompt_key for e in held}
    assert train_keys and held_keys and not train_keys & held_keys
    assert 0.12 < len(held_keys) / (len(train_keys) + len(held_keys)) < 0.28
    # Both generators' answers to a held-out prompt are held out together.
    assert len(held) == 2 * len(held_keys)
    assert is_holdout(prompt_key("x"), 0.5, 1) == is_holdout(prompt_key("  x "), 0.5, 1)
