"""Learning curves: held-out Kendall tau against the number of training prompts.

The ranker's tau targets (0.45 from the prompt alone, and of the remaining length after 32 and
64 generated tokens) are missed with the 646 training prompts alpaca_eval gives one generator.
This measures whether more prompts would reach them, and how many: the shipped training recipe
(`llmfleet ranker train`'s defaults, static embedder, the remaining model on all 14 generators'
answers to the training prompts) on a growing random subset of one split's training prompts,
always evaluated on the same held-out prompts of Meta-Llama-3-8B-Instruct.

For each curve, a straight line of tau against log2(training prompts), fitted by least squares
over every (seed, size) point, says what one doubling of the data is worth and how many prompts
the line would need to reach 0.45 (an extrapolation; curves of this kind bend down, so it is a
lower bound on the data needed).

    .venv/bin/python bench/ranker_learning_curve.py     # about 25 minutes on 2 shared cores
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmfleet.ranker.data import load_examples, split_by_prompt  # noqa: E402
from llmfleet.ranker.evaluate import evaluate, evaluate_remaining  # noqa: E402
from llmfleet.ranker.text import count_tokens  # noqa: E402
from llmfleet.ranker.train import TrainOptions, make_embedder, train_ranker  # noqa: E402

DATA = Path(os.environ.get("LLMFLEET_SHARED_DATA", ROOT.parent / "shared" / "data")) / "alpaca_eval"
TARGET = "Meta-Llama-3-8B-Instruct"
KS = [32, 64]
GOAL = 0.45


def subset(examples, keep: set[str]):
    return [ex for ex in examples if ex.prompt_key in keep]


def fit_line(points: list[tuple[int, float]]) -> dict:
    """tau = a + b * log2(prompts), least squares; and where the line reaches GOAL."""
    xs = [math.log2(n) for n, _ in points]
    ys = [t for _, t in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return {"intercept": my, "per_doubling": 0.0, "prompts_to_reach_goal": math.inf}
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    need = 2 ** ((GOAL - a) / b) if b > 0 else math.inf
    return {"intercept": a, "per_doubling": b, "prompts_to_reach_goal": need}


def summarize(runs: list[dict]) -> dict:
    """Per metric: mean ± sd over seeds at each fraction of the training prompts, and the fit."""
    curves = {}
    for metric in ["prompt_only_tau", *(f"remaining_tau_{k}" for k in KS)]:
        by_fraction: dict[float, list[dict]] = {}
        for r in runs:
            by_fraction.setdefault(r["fraction"], []).append(r)
        points = {}
        for _, rs in sorted(by_fraction.items()):
            v = [r[metric] for r in rs]
            n = round(statistics.fmean(r["prompts"] for r in rs))
            points[str(n)] = {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v}
        curves[metric] = {"points": points, "log2_fit": fit_line([(r["prompts"], r[metric]) for r in runs])}
    return curves


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench/results/ranker_learning_curve.json"))
    args = ap.parse_args()
    import numpy as np

    llama = load_examples([DATA / TARGET / "model_outputs.json"], count_tokens)
    everyone = load_examples(sorted(DATA.glob("*/model_outputs.json")), count_tokens)
    embedder = make_embedder("static", progress=False)
    runs = []
    t0 = time.time()
    for seed in args.seeds:
        train, held = split_by_prompt(llama, 0.2, seed)
        keys = list(dict.fromkeys(ex.prompt_key for ex in train))
        # Nested subsets: each size holds the smaller ones' prompts, so a curve's points differ
        # only by the prompts added.
        order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
        held_keys = {ex.prompt_key for ex in held}
        for fraction in args.fractions:
            keep = set(order[: max(1, round(fraction * len(keys)))])
            options = TrainOptions(seed=seed, progress=False, num_threads=args.threads)
            res = train_ranker(subset(llama, keep) + held, options, embedder,
                               remaining_examples=subset(everyone, keep | held_keys))  # fmt: skip
            seen = set(res.train_keys)
            assert seen == keep, "the held-out prompts must stay out of training"
            prompt_only, _ = evaluate(res.ranker, held, seen, seed=seed)
            rem = evaluate_remaining(res.ranker, held, seen, [0, *KS])
            run = {"seed": seed, "fraction": fraction, "prompts": len(keep), "prompt_only_tau": prompt_only["kendall_tau"],
                   **{f"remaining_tau_{k}": rem["remaining_tau"][str(k)] for k in KS},
                   "heldout_rows": rem["remaining_rows"]}  # fmt: skip
            runs.append(run)
            print(json.dumps(run), f"({time.time() - t0:.0f} s)", flush=True)
    curves = summarize(runs)
    doc = {
        "protocol": f"{TARGET}, 80/20 split by prompt, seeds {args.seeds}; nested random subsets of each split's "
        "training prompts; the shipped recipe (static embedder, remaining model on all 14 generators' answers to the "
        "kept training prompts); always the same held-out prompts; tokens: the ranker's WordPiece tokenizer",
        "goal": GOAL,
        "runs": runs,
        "curves": curves,
        "prompts_in_alpaca_eval": len({ex.prompt_key for ex in llama}),
        "wall_s": round(time.time() - t0, 1),
        "command": "python bench/ranker_learning_curve.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, Path(args.out).with_suffix(".png"))
    for metric, c in curves.items():
        fit = c["log2_fit"]
        print(f"{metric}: " + ", ".join(f"{n}: {p['mean']:.3f}" for n, p in c["points"].items())
              + f"; +{fit['per_doubling']:.3f} per doubling, reaches {GOAL} at about {fit['prompts_to_reach_goal']:.0f} prompts")  # fmt: skip
    return 0


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = {"prompt_only_tau": "from the prompt", "remaining_tau_32": "remaining, after 32 tokens",
             "remaining_tau_64": "remaining, after 64 tokens"}  # fmt: skip
    for metric, c in doc["curves"].items():
        ns = [int(n) for n in c["points"]]
        means = [p["mean"] for p in c["points"].values()]
        sds = [p["sd"] for p in c["points"].values()]
        line = ax.errorbar(ns, means, yerr=sds, marker="o", capsize=3, label=names.get(metric, metric))
        fit = c["log2_fit"]
        xs = [min(ns), max(max(ns) * 8, min(fit["prompts_to_reach_goal"], 2e5))]
        ax.plot(xs, [fit["intercept"] + fit["per_doubling"] * math.log2(x) for x in xs], "--",
                color=line[0].get_color(), alpha=0.6)  # fmt: skip
    ax.axhline(doc["goal"], color="grey", lw=1, ls=":", label=f"target {doc['goal']}")
    ax.axvline(doc["prompts_in_alpaca_eval"], color="black", lw=1, ls=":", label="every alpaca_eval prompt")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training prompts")
    ax.set_ylabel("held-out Kendall tau (mean ± sd, 3 splits)")
    ax.set_title("Ranker learning curves, Meta-Llama-3-8B-Instruct (dashed: log-linear fit)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
