"""The command-line contract: train --data ... --out DIR, eval --model DIR --data PATH --out FILE.json."""

from __future__ import annotations

import argparse
import json

import pytest

from llmfleet.ranker import cli


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="llmfleet ranker")
    cli.register(parser)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def jsonl_data(tmp_path_factory, llama_examples):
    """The Llama-3-8B slice as JSONL {prompt, output_tokens}, the issue's second input format."""
    path = tmp_path_factory.mktemp("cli") / "llama.jsonl"
    path.write_text("".join(json.dumps({"prompt": e.prompt, "output_tokens": e.output_tokens}) + "\n"
                            for e in llama_examples[:400]))
    return path


def test_train_then_eval_writes_contract_json_and_plot(tmp_path, jsonl_data, embedder, monkeypatch, capsys):
    import llmfleet.ranker.train as train_mod

    # Reuse the session's token table instead of building another one.
    monkeypatch.setattr(train_mod, "make_embedder", lambda kind, progress=True: embedder)
    out = tmp_path / "art"
    assert _run(["train", "--data", str(jsonl_data), "--out", str(out), "--no-progress", "--holdout", "0.3"]) == 0
    assert (out / "manifest.json").is_file()
    report = tmp_path / "eval.json"
    assert _run(["eval", "--model", str(out), "--data", str(jsonl_data), "--out", str(report)]) == 0
    result = json.loads(report.read_text())
    for key, kind in (("n", int), ("kendall_tau", float), ("kendall_tau_batch32", float), ("spearman", float)):
        assert isinstance(result[key], kind)
    assert 80 < result["n"] < 160  # only the held-out 30% of 400 prompts
    assert result["kendall_tau"] > result["baselines"]["prompt_length"]["kendall_tau"]
    assert report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert _run(["predict", "--model", str(out), "--prompt", "Write a long story."]) == 0
    assert "tokens" in capsys.readouterr().out


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "", "output_tokens": 3}\n')
    assert _run(["train", "--data", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert _run(["eval", "--model", str(tmp_path / "none"), "--data", str(bad), "--out", str(tmp_path / "e.json")]) == 2
    assert "no ranker artifact" in capsys.readouterr().err
    assert _run(["info", "--model", str(tmp_path)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err


def test_help_documents_the_contract():
    parser = argparse.ArgumentParser(prog="llmfleet ranker")
    cli.register(parser)
    text = parser.format_help()
    assert "train --data" in text and "eval --model" in text and "WordPiece" in text
