"""Online learning curve: held-out Kendall tau as served traffic flows into the OnlineRanker.

Replays the training 80% of the Meta-Llama-3-8B-Instruct prompts as completed requests (in a
random order, each with its answer text, as the dispatcher records them) into
`OnlineRanker.record_completion`, calls `retrain_now()` at fixed traffic volumes, and measures on
the held-out 20% after each hot swap: tau of the admission estimate, and tau of the remaining
length after 32 and 64 generated tokens (the re-estimates the swapped-in model makes at slice
boundaries), beside the prompt-only score on the same surviving rows. Before the first retrain
the live predictor is the prompt-length cold start, which cannot re-estimate.

Reproduce (about 3-5 minutes):
    .venv/bin/python bench/ranker_online.py --out bench/results/ranker_online.json
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

from llmfleet.core.clock import FakeClock  # noqa: E402
from llmfleet.core.prediction import PredictionInput  # noqa: E402
from llmfleet.ranker.data import load_examples, split_by_prompt  # noqa: E402
from llmfleet.ranker.evaluate import evaluate_remaining  # noqa: E402
from llmfleet.ranker.metrics import kendall_tau  # noqa: E402
from llmfleet.ranker.online import OnlineRanker, make_trainer  # noqa: E402
from llmfleet.ranker.text import count_tokens  # noqa: E402

DATA = Path(os.environ.get("LLMFLEET_SHARED_DATA", ROOT.parent / "shared" / "data")) / "alpaca_eval"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 100, 200, 400, 10**9])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench/results/ranker_online.json"))
    args = parser.parse_args()
    examples = load_examples([DATA / "Meta-Llama-3-8B-Instruct" / "model_outputs.json"], count_tokens)
    train, held = split_by_prompt(examples, 0.2, args.seed)
    traffic = [train[i] for i in np.random.default_rng(args.seed).permutation(len(train))]
    held_items = [PredictionInput(str(i), n, e.prompt) for i, (e, n) in
                  enumerate(zip(held, count_tokens([e.prompt for e in held]), strict=True))]
    truth = [e.output_tokens for e in held]
    ranker = OnlineRanker(FakeClock(), min_examples=50, trainer=make_trainer())

    def tau() -> float:
        return kendall_tau([e.score for e in ranker.predict(held_items)], truth)

    def remaining() -> dict:
        if not ranker.reestimates:
            return {}
        got = evaluate_remaining(ranker.live, held, None, [32, 64])  # type: ignore[arg-type]
        return {"remaining_tau": got["remaining_tau"], "remaining_tau_prompt_only": got["remaining_tau_prompt_only"]}

    curve = [{"completions": 0, "model": ranker.live.name, "kendall_tau": tau(), "retrain_seconds": 0.0}]
    fed = 0
    for step in args.steps:
        upto = min(step, len(traffic))
        for ex in traffic[fed:upto]:
            ranker.record_completion(ex.prompt, len(ex.prompt.split()), ex.output_tokens, output_text=ex.output)
        fed = upto
        t0 = time.perf_counter()
        ranker.retrain_now()
        curve.append({"completions": fed, "model": ranker.live.name, "kendall_tau": tau(),
                      "retrain_seconds": time.perf_counter() - t0, **remaining()})
        print(curve[-1], flush=True)
        if fed == len(traffic):
            break
    report = {"held_out_prompts": len(held), "curve": curve,
              "command": "python bench/ranker_online.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=2))
    _plot(curve, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


def _plot(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [c["completions"] for c in curve]
    y = [c["kendall_tau"] for c in curve]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot(x, y, marker="o", label="admission estimate")
    for k, style in (("32", "s--"), ("64", "^--")):
        pts = [(c["completions"], c["remaining_tau"][k]) for c in curve if "remaining_tau" in c]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=f"remaining length after {k} tokens")
    ax.legend(fontsize=8)
    ax.annotate("cold start: prompt length", (x[0], y[0]), textcoords="offset points", xytext=(8, -4), fontsize=8)
    ax.set_xlabel("completed requests recorded")
    ax.set_ylabel("Kendall tau on held-out prompts")
    ax.set_title("Online ranker, Meta-Llama-3-8B-Instruct traffic", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
