"""Evaluation on held-out prompts: rank correlation, baselines, toy SJF queue, calibration, plot.

Prompts the artifact was trained on are dropped before scoring (the artifact keeps their keys),
so `eval` on a full data file measures held-out prompts only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmfleet.ranker.data import Example, RankerDataError
from llmfleet.ranker.metrics import kendall_tau, kendall_tau_batches, sjf_queue_latency, spearman
from llmfleet.ranker.model import LearnedRanker

BATCH = 32


def score_in_batches(ranker: LearnedRanker, prompts: Sequence[str], batch: int = BATCH) -> tuple[np.ndarray, list[float]]:
    """Scores plus the wall time per request (ms) of each batch, embedding and features included."""
    scores = np.zeros(len(prompts))
    per_request_ms: list[float] = []
    for start in range(0, len(prompts), batch):
        part = list(prompts[start : start + batch])
        t0 = time.perf_counter()
        scores[start : start + len(part)] = ranker.score_texts(part)
        per_request_ms.append((time.perf_counter() - t0) * 1000 / len(part))
    return scores, per_request_ms


def evaluate(
    ranker: LearnedRanker,
    examples: Sequence[Example],
    train_keys: set[str] | None = None,
    seed: int = 0,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Metrics as a JSON-ready dict, plus the arrays the plot needs."""
    from llmfleet.ranker.text import count_tokens

    seen = train_keys or set()
    held = [ex for ex in examples if ex.prompt_key not in seen]
    if len(held) < 2:
        raise RankerDataError(
            f"only {len(held)} of {len(examples)} rows are on prompts the model was not trained on; "
            "evaluate on held-out prompts"
        )
    prompts = [ex.prompt for ex in held]
    truth = np.array([ex.output_tokens for ex in held], float)
    scores, per_request_ms = score_in_batches(ranker, prompts)
    prompt_len = np.array(count_tokens(prompts), float)
    estimates = ranker.estimate(scores)
    expected = np.array([e.expected_tokens for e in estimates])
    upper = np.array([e.upper_tokens for e in estimates])
    keys = {"ranker": scores, "prompt_length": prompt_len}
    result = {
        "n": len(held),
        "n_excluded_trained_prompts": len(examples) - len(held),
        "generators": sorted({ex.generator for ex in held}),
        "kendall_tau": kendall_tau(scores, truth),
        "kendall_tau_batch32": kendall_tau_batches(scores, truth, BATCH, seed=seed),
        "spearman": spearman(scores, truth),
        "baselines": {
            "prompt_length": {
                "kendall_tau": kendall_tau(prompt_len, truth),
                "kendall_tau_batch32": kendall_tau_batches(prompt_len, truth, BATCH, seed=seed),
                "spearman": spearman(prompt_len, truth),
            },
            "constant_fcfs": {"kendall_tau": 0.0, "kendall_tau_batch32": 0.0, "spearman": 0.0},
            "oracle": {"kendall_tau": 1.0, "kendall_tau_batch32": 1.0, "spearman": 1.0},
        },
        "sjf_queue_mean_latency_tokens": {
            "poisson_load_0.9": sjf_queue_latency(keys, truth, load=0.9, seed=seed),
            "burst_at_t0": sjf_queue_latency(keys, truth, load=None, seed=seed),
        },
        "calibration": {
            "upper_is_p90_coverage": float(np.mean(truth <= upper)),
            "expected_is_median_fraction_below": float(np.mean(truth <= expected)),
            "median_abs_error_tokens": float(np.median(np.abs(truth - expected))),
        },
        "latency_ms_per_request_batch32": {
            "p50": float(np.percentile(per_request_ms, 50)),
            "p99": float(np.percentile(per_request_ms, 99)),
            "batches": len(per_request_ms),
        },
        "model": {"name": ranker.name, "embedder": ranker.config.embedder},
    }
    return result, {"scores": scores, "truth": truth}


def evaluate_remaining(ranker: LearnedRanker, examples: Sequence[Example], train_keys: set[str] | None,
                       ks: Sequence[int]) -> dict:  # fmt: skip
    """For each k: over held-out rows whose answer is longer than k tokens, Kendall's tau between
    the predicted and the true remaining length given the prompt plus the answer's first k tokens
    (the ranker's own tokenizer counts them), beside the prompt-only score on the same rows."""
    from llmfleet.core.prediction import PredictionInput
    from llmfleet.ranker.remaining import cut_after
    from llmfleet.ranker.text import TOKENIZER_NAME, token_offsets

    seen = train_keys or set()
    held = [ex for ex in examples if ex.prompt_key not in seen and ex.output]
    if ranker.remaining is None:
        raise RankerDataError("this artifact has no remaining-length model (train it from data with answer texts)")
    if len(held) < 2:
        raise RankerDataError("--generated-tokens needs held-out rows with answer texts (alpaca_eval 'output')")
    offsets = token_offsets([ex.output or "" for ex in held])
    prompt_scores = ranker.score_texts([ex.prompt for ex in held])
    taus, baseline, rows, per_request_ms = {}, {}, {}, []
    for k in ks:
        alive = [i for i, off in enumerate(offsets) if len(off) > k]
        truth = np.array([len(offsets[i]) - k for i in alive], float)
        items = [
            PredictionInput(str(i), 0, held[i].prompt, generated_tokens=k,
                            generated_text=cut_after(held[i].output or "", offsets[i], k))
            for i in alive
        ]  # fmt: skip
        scores = np.zeros(len(items))
        for start in range(0, len(items), BATCH):
            t0 = time.perf_counter()
            part = ranker.predict(items[start : start + BATCH])
            per_request_ms.append((time.perf_counter() - t0) * 1000 / max(len(part), 1))
            scores[start : start + len(part)] = [e.score for e in part]
        taus[str(k)] = kendall_tau(scores, truth)
        baseline[str(k)] = kendall_tau(prompt_scores[alive], truth)
        rows[str(k)] = len(alive)
    return {
        "remaining_tau": taus,
        "remaining_tau_prompt_only": baseline,
        "remaining_rows": rows,
        "remaining_tokens_counted_with": TOKENIZER_NAME,
        "remaining_latency_ms_per_request_batch32": {
            "p50": float(np.percentile(per_request_ms, 50)) if per_request_ms else 0.0,
            "p99": float(np.percentile(per_request_ms, 99)) if per_request_ms else 0.0,
        },
    }


def plot_ranks(scores: np.ndarray, truth: np.ndarray, title: str, path: str | Path) -> None:
    """Scatter of predicted rank against true rank, with tau in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import rankdata

    pred_rank, true_rank = rankdata(scores), rankdata(truth)
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=110)
    ax.scatter(true_rank, pred_rank, s=10, alpha=0.6, color="tab:blue", edgecolors="none")
    n = len(scores)
    ax.plot([1, n], [1, n], color="grey", lw=1, ls="--", label="oracle")
    ax.set_xlabel("true rank of output length (1 = shortest)")
    ax.set_ylabel("rank predicted by the ranker")
    ax.set_title(f"{title}\nKendall tau {kendall_tau(scores, truth):.3f}, n={n}", fontsize=10)
    ax.legend(loc="upper left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
