"""A stronger first guess? Pooled training over all 14 alpaca_eval generators, with the generator
as a feature, against training on the target generator alone; plus task and format features.

Protocol (the issue's): split by prompt, 80/20, seeds 7, 8, 9; the held-out prompts are never
trained on, under any generator. Kendall's tau between the prediction and the target
generator's true length on its held-out prompts. Tokens are counted with the ranker's own
tokenizer (`llmfleet.ranker.text.count_tokens`).

Rows (same features, same LightGBM settings, same splits):
- `target only`: the shipped recipe's features, trained on the target generator's answers;
- `pooled + generator`: every generator's answers to the training prompts, with the generator
  one-hot as a feature; predictions are for the target generator;
- `pooled, per-generator standardised targets`: each generator's log lengths standardised
  before pooling (so a verbose model does not dominate), generator one-hot too;
- `+ task/format features`: the rows above plus code/list/heading/word-limit/"explain"
  features of the prompt (`task_features` below).

Reproduce (about 3 minutes on 2 cores; writes bench/results/ranker_pooled.json):
    .venv/bin/python bench/ranker_pooled.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmfleet.ranker.data import load_examples, prompt_key, split_by_prompt  # noqa: E402
from llmfleet.ranker.features import FeatureConfig  # noqa: E402
from llmfleet.ranker.metrics import kendall_tau  # noqa: E402
from llmfleet.ranker.text import count_tokens  # noqa: E402
from llmfleet.ranker.train import LGB_PARAMS, make_embedder, prompt_features  # noqa: E402

DATA = Path(os.environ.get("LLMFLEET_SHARED_DATA", ROOT.parent / "shared" / "data")) / "alpaca_eval"
TARGET = "Meta-Llama-3-8B-Instruct"
ROUNDS = 300

_TASKS = {
    "code": re.compile(r"\b(code|function|python|javascript|sql|program|script|regex|class)\b", re.I),
    "list": re.compile(r"\b(list|steps|tips|ways|ideas|examples|reasons)\b", re.I),
    "explain": re.compile(r"\b(explain|describe|why|how does|how do|discuss|compare)\b", re.I),
    "write": re.compile(r"\b(write|essay|story|poem|article|blog|letter|email)\b", re.I),
    "short": re.compile(r"\b(one word|one sentence|yes or no|briefly|in short|short answer|tl;dr)\b", re.I),
    "translate": re.compile(r"\b(translate|rewrite|paraphrase|summari[sz]e|correct)\b", re.I),
}
_LIMIT = re.compile(r"\b(\d{1,4})\s*(words?|sentences?|paragraphs?|lines?|bullet|items?|tips|ways|steps)\b", re.I)


def task_features(prompts: list[str]) -> np.ndarray:
    """Task and format cues: what is asked (code, a list, an explanation, a piece of writing, a
    short answer, a rewrite), the format the prompt itself uses, and any size it states."""
    rows = []
    for text in prompts:
        limit = [int(n) for n, _ in _LIMIT.findall(text)]
        rows.append(
            [float(bool(p.search(text))) for p in _TASKS.values()]
            + [
                float("```" in text),
                float(bool(re.search(r"^\s*(\d+[.)]|[-*])\s", text, re.M))),
                float(bool(re.search(r"^#+\s", text, re.M))),
                float(max(limit)) if limit else 0.0,
                float(text.rstrip().endswith("?")),
            ]
        )
    return np.array(rows, dtype=np.float32)


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int) -> np.ndarray:
    params = {**LGB_PARAMS, "seed": seed, "num_threads": 2}
    model = lgb.train(params, lgb.Dataset(x_train, y_train), num_boost_round=ROUNDS)
    return np.asarray(model.predict(x_test))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ranker_pooled.json")
    args = ap.parse_args(argv)
    models = sorted(p.name for p in DATA.iterdir() if (p / "model_outputs.json").exists())
    examples = [ex for m in models for ex in load_examples([DATA / m / "model_outputs.json"], count_tokens)]
    prompts = sorted({ex.prompt for ex in examples})
    index = {prompt_key(p): i for i, p in enumerate(prompts)}
    base = prompt_features(prompts, FeatureConfig(), make_embedder("static", progress=False), progress=False)
    tasks = task_features(prompts)
    gen_index = {m: i for i, m in enumerate(models)}

    def design(rows: list, with_tasks: bool, with_generator: bool) -> np.ndarray:
        x = base[[index[ex.prompt_key] for ex in rows]]
        if with_tasks:
            x = np.hstack([x, tasks[[index[ex.prompt_key] for ex in rows]]])
        if with_generator:
            onehot = np.zeros((len(rows), len(models)), dtype=np.float32)
            onehot[np.arange(len(rows)), [gen_index[ex.generator] for ex in rows]] = 1.0
            x = np.hstack([x, onehot])
        return x

    # Per-generator log-length mean and std, from the training prompts only (per seed below).
    results: dict[str, list[float]] = {}
    for seed in args.seeds:
        train, held = split_by_prompt(examples, 0.2, seed)
        held_t = [ex for ex in held if ex.generator == TARGET]
        truth = np.array([ex.output_tokens for ex in held_t])
        train_t = [ex for ex in train if ex.generator == TARGET]
        y_all = np.log1p([ex.output_tokens for ex in train])
        stats = {}
        for m in models:
            ys = np.log1p([ex.output_tokens for ex in train if ex.generator == m])
            stats[m] = (ys.mean(), ys.std() or 1.0)
        y_std = np.array([(y - stats[ex.generator][0]) / stats[ex.generator][1] for y, ex in zip(y_all, train, strict=True)])
        for tasks_on in (False, True):
            suffix = " + task/format features" if tasks_on else ""
            rows = {
                f"target only{suffix}": (train_t, np.log1p([ex.output_tokens for ex in train_t]), False),
                f"pooled + generator{suffix}": (train, y_all, True),
                f"pooled, per-generator standardised targets{suffix}": (train, y_std, True),
            }
            for name, (rows_train, y, gen) in rows.items():
                pred = fit_predict(design(rows_train, tasks_on, gen), y, design(held_t, tasks_on, gen), seed)
                tau = kendall_tau(pred, truth)
                results.setdefault(name, []).append(round(float(tau), 4))
                print(f"seed {seed}  {name:60s} tau {tau:.3f}", flush=True)
    summary = {
        name: {"mean": round(float(np.mean(v)), 4), "std": round(float(np.std(v)), 4), "per_seed": v}
        for name, v in results.items()
    }
    payload = {
        "target": TARGET,
        "generators": len(models),
        "seeds": args.seeds,
        "split": "80/20 by prompt",
        "tokens_counted_with": "llmfleet.ranker.text.count_tokens (the artifact's own tokenizer)",
        "lightgbm_rounds": ROUNDS,
        "kendall_tau": summary,
        "command": "python bench/ranker_pooled.py " + " ".join(argv or sys.argv[1:]),
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    for name, s in summary.items():
        print(f"{name:60s} {s['mean']:.3f} ± {s['std']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
