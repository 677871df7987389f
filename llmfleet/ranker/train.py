"""Training: (prompt, output length) examples -> a `LearnedRanker`.

Model choice, in short (the README section says more): LightGBM *regression* on the
standardised log output length. A scheduler compares every waiting request with every other,
so all pairs matter equally (Kendall's tau); LambdaRank optimises NDCG, which weights the top of
each list, and needs artificial query groups. The log target makes L2 a smooth surrogate for
pairwise order and also gives a score that calibrates into token counts.

Steps: split by prompt; embed each distinct prompt once; standardise log1p(tokens) per
generating model (so several models' answers can be pooled); 5-fold cross-validation by prompt
picks the number of boosting rounds and yields out-of-fold scores; those calibrate the score
into (median, p90) tokens per score bucket; the final model is fit on all training prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmfleet.ranker.data import Example, RankerDataError, split_by_prompt
from llmfleet.ranker.features import FeatureConfig, cheap_features
from llmfleet.ranker.metrics import kendall_tau
from llmfleet.ranker.model import Calibration, LearnedRanker, LengthOnlyScore
from llmfleet.ranker.progress import progress_bar

MIN_TRAIN_PROMPTS = 40
LGB_PARAMS: dict[str, Any] = {
    "objective": "regression",
    "learning_rate": 0.03,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "force_col_wise": True,
    "deterministic": True,
    "verbose": -1,
}


@dataclass
class TrainOptions:
    embedder: str = "static"  # "static" | "contextual" | "none"
    holdout_fraction: float = 0.2
    seed: int = 0
    generator: str | None = None  # whose lengths the estimate is calibrated to; default: most rows
    folds: int = 5
    max_rounds: int = 1500
    num_threads: int = 1  # LightGBM's OpenMP spins badly on shared cores; 1 thread is fastest here
    progress: bool = True
    remaining: bool = True  # also learn remaining length from answer prefixes (needs answer texts)
    remaining_rounds: int = 600
    # The prompt-only score as a feature of the remaining model: measured no better over 3 seeds
    # (bench/RANKER.md), so off by default.
    stack_prompt_score: bool = False


@dataclass
class TrainResult:
    ranker: LearnedRanker
    train_keys: list[str]
    holdout_pool: list[dict]
    report: dict = field(default_factory=dict)


def make_embedder(kind: str, progress: bool = True) -> Any:
    if kind == "none":
        return None
    if kind == "static":
        from llmfleet.ranker.text import StaticEmbedder, static_table

        return StaticEmbedder(static_table(progress=progress))
    if kind == "contextual":
        from llmfleet.ranker.text import ContextualEmbedder

        return ContextualEmbedder(FeatureConfig().contextual_max_tokens)
    raise ValueError(f"unknown embedder {kind!r}; choose static, contextual or none")


def prompt_features(
    prompts: Sequence[str], config: FeatureConfig, embedder: Any, progress: bool = True, chunk: int = 256
) -> np.ndarray:
    from llmfleet.ranker.text import token_ids

    blocks = []
    with progress_bar("embedding prompts", total=len(prompts), enabled=progress) as bar:
        for start in range(0, len(prompts), chunk):
            part = list(prompts[start : start + chunk])
            ids = token_ids(part)
            cheap = cheap_features(part, ids, config)
            blocks.append(cheap if embedder is None else np.hstack([cheap, embedder.embed_ids(ids)]))
            bar.advance(len(part))
    return np.vstack(blocks)


def _standardised_targets(examples: Sequence[Example]) -> tuple[np.ndarray, dict[str, dict[str, float]]]:
    logs = np.log1p(np.array([ex.output_tokens for ex in examples], float))
    gens = np.array([ex.generator for ex in examples])
    target = np.zeros(len(examples))
    stats: dict[str, dict[str, float]] = {}
    for g in dict.fromkeys(gens.tolist()):
        sel = gens == g
        mu, sd = float(logs[sel].mean()), float(logs[sel].std()) or 1.0
        target[sel] = (logs[sel] - mu) / sd
        stats[g] = {"mean_log1p": mu, "std_log1p": sd}
    return target, stats


def train_ranker(
    examples: Sequence[Example], options: TrainOptions, embedder: Any = None,
    remaining_examples: Sequence[Example] | None = None,
) -> TrainResult:  # fmt: skip
    """Fit a ranker; `embedder` may be passed in to share one table between many trainings.

    The remaining-length model learns from the answer texts of `remaining_examples` (default:
    `examples`) on the training prompts only. Answers from many models teach it more about how
    answers unfold than one model's alone (measured in bench/RANKER.md)."""
    import lightgbm as lgb

    train, held = split_by_prompt(examples, options.holdout_fraction, options.seed)
    keys = list(dict.fromkeys(ex.prompt_key for ex in train))
    if len(keys) < MIN_TRAIN_PROMPTS:
        raise RankerDataError(
            f"only {len(keys)} distinct training prompts after holding out {options.holdout_fraction:.0%}; "
            f"need at least {MIN_TRAIN_PROMPTS}"
        )
    counts: dict[str, int] = {}
    for ex in train:
        counts[ex.generator] = counts.get(ex.generator, 0) + 1
    generator = options.generator or max(counts, key=lambda g: counts[g])
    if generator not in counts:
        raise RankerDataError(f"generator {generator!r} is not in the data (have: {', '.join(counts)})")

    config = FeatureConfig(embedder=options.embedder)
    if embedder is None:
        embedder = make_embedder(options.embedder, options.progress)
    first_prompt: dict[str, str] = {}
    for ex in train:
        first_prompt.setdefault(ex.prompt_key, ex.prompt)
    prompt_x = prompt_features([first_prompt[k] for k in keys], config, embedder, options.progress)
    row_of_key = {k: i for i, k in enumerate(keys)}
    rows = np.array([row_of_key[ex.prompt_key] for ex in train])
    x = prompt_x[rows]
    y, target_stats = _standardised_targets(train)

    # Folds by prompt: every answer to one prompt lands in the same fold.
    fold_of_prompt = np.random.default_rng(options.seed).permutation(len(keys)) % options.folds
    fold = fold_of_prompt[rows]
    params = {**LGB_PARAMS, "seed": options.seed, "num_threads": options.num_threads}
    oof = np.zeros(len(train))
    best_rounds = []
    total = options.folds + 1
    with progress_bar("training LightGBM (5-fold CV + final)", total=total, enabled=options.progress) as bar:
        for k in range(options.folds):
            tr, va = fold != k, fold == k
            dtrain = lgb.Dataset(x[tr], y[tr], free_raw_data=False)
            dvalid = lgb.Dataset(x[va], y[va], reference=dtrain)
            booster = lgb.train(
                params, dtrain, options.max_rounds, valid_sets=[dvalid],
                callbacks=[lgb.early_stopping(100, verbose=False)],
            )
            best_rounds.append(booster.best_iteration or options.max_rounds)
            oof[va] = booster.predict(x[va], num_iteration=booster.best_iteration)
            bar.advance()
        rounds = int(np.median(best_rounds))
        final = lgb.train(params, lgb.Dataset(x, y), rounds)
        bar.advance()

    gen_sel = np.array([ex.generator == generator for ex in train])
    tokens = np.array([ex.output_tokens for ex in train], float)
    calibration = Calibration.fit(oof[gen_sel], tokens[gen_sel])
    prompt_tokens = prompt_x[rows, 0]
    length_only = LengthOnlyScore.fit(prompt_tokens, y)
    report = {
        "rows": len(train),
        "prompts": len(keys),
        "heldout_rows": len(held),
        "heldout_prompts": len({ex.prompt_key for ex in held}),
        "generators": counts,
        "calibrated_for": generator,
        "boosting_rounds": rounds,
        "cv_kendall_tau": kendall_tau(oof[gen_sel], tokens[gen_sel]),
        "cv_kendall_tau_prompt_length": kendall_tau(prompt_tokens[gen_sel], tokens[gen_sel]),
    }
    metadata = {
        "objective": "regression on per-generator standardised log1p(output tokens)",
        "lightgbm_params": params,
        "holdout_fraction": options.holdout_fraction,
        "seed": options.seed,
        "target_stats": target_stats,
        "training": report,
    }
    remaining = None
    held_keys = {ex.prompt_key for ex in held}
    answers = [ex for ex in (remaining_examples if remaining_examples is not None else train)
               if ex.output and ex.prompt_key not in held_keys]  # fmt: skip
    if options.remaining and len(answers) >= MIN_TRAIN_PROMPTS:
        from llmfleet.ranker.remaining import fit_remaining

        new = [k for k in dict.fromkeys(ex.prompt_key for ex in answers) if k not in row_of_key]
        texts = {ex.prompt_key: ex.prompt for ex in answers}
        extra_x = prompt_features([texts[k] for k in new], config, embedder, False) if new else prompt_x[:0]
        feats = {**{k: prompt_x[i] for k, i in row_of_key.items()}, **{k: extra_x[j] for j, k in enumerate(new)}}
        folds = {k: fold_of_prompt[i] for k, i in row_of_key.items()}
        # Stacking: each training prompt's out-of-fold prompt-only score, so the remaining model
        # never sees a score the prompt model fitted on that same prompt.
        oof_of_key = {ex.prompt_key: float(o) for ex, o in zip(train, oof, strict=True)}
        other_scores = final.predict(extra_x) if new else np.zeros(0)
        score_of_key = {**oof_of_key, **{k: float(other_scores[j]) for j, k in enumerate(new)}}
        rng = np.random.default_rng(options.seed)
        with progress_bar("training the remaining-length model", total=1, enabled=options.progress) as bar:
            remaining = fit_remaining(
                np.array([feats[ex.prompt_key] for ex in answers]), [ex.prompt for ex in answers],
                [ex.output or "" for ex in answers],
                np.array([folds.get(ex.prompt_key, rng.integers(options.folds)) for ex in answers]),
                params, embedder, rounds=options.remaining_rounds, prefix_embedding=options.embedder != "none",
                prompt_scores=np.array([score_of_key[ex.prompt_key] for ex in answers]) if options.stack_prompt_score else None,
            )  # fmt: skip
            bar.advance()
        metadata["remaining"] = {"answers": len(answers), "generators": sorted({ex.generator for ex in answers}),
                                 "tau_curve_heldback": [list(p) for p in remaining.tau_curve]}  # fmt: skip
    ranker = LearnedRanker(final, config, embedder, calibration, length_only, metadata, remaining)
    pool = [
        {"prompt": ex.prompt, "output_tokens": ex.output_tokens}
        for ex in held
        if ex.generator == generator
    ]
    return TrainResult(ranker, keys, pool, report)
