"""Remaining-length prediction on real answer prefixes (issue: the ranker learns from what is
being generated).

Protocol: Meta-Llama-3-8B-Instruct's alpaca_eval answers, 80/20 split by prompt, seeds 7, 8, 9.
The prompt-only model trains on Llama's training prompts. The remaining-length model trains on
the answers to those same prompts, either Llama's alone or all 14 generators' (held-out
prompts stay out of both). On the held-out Llama rows still running after k tokens (counted
with the ranker's WordPiece tokenizer), Kendall's tau between predicted and true remaining
length, against the prompt-only score on the same rows. Also the per-request latency of
re-estimates in batches of 32, and the eval JSON the simulator's re-estimate model reads.

    .venv/bin/python bench/ranker_remaining.py            # about 15 minutes on 2 shared cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmfleet.ranker.data import load_examples  # noqa: E402
from llmfleet.ranker.evaluate import evaluate, evaluate_remaining  # noqa: E402
from llmfleet.ranker.text import count_tokens  # noqa: E402
from llmfleet.ranker.train import TrainOptions, make_embedder, train_ranker  # noqa: E402

DATA = Path(os.environ.get("LLMFLEET_SHARED_DATA", ROOT.parent / "shared" / "data")) / "alpaca_eval"
TARGET = "Meta-Llama-3-8B-Instruct"
KS = [0, 32, 64, 128]


def _mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "runs": values}  # fmt: skip


def noise_floor(everyone) -> dict:
    """How well other models' answer lengths to the same prompts rank Llama-3-8B's: what the
    prompt says about length, measured without any model (a ceiling far above today's ranker)."""
    import numpy as np

    from llmfleet.ranker.metrics import kendall_tau

    by: dict[str, dict[str, int]] = {}
    for ex in everyone:
        by.setdefault(ex.generator, {})[ex.prompt_key] = ex.output_tokens
    keys = [k for k in by[TARGET] if all(k in lengths for lengths in by.values())]
    truth = np.array([by[TARGET][k] for k in keys], float)
    others = [g for g in sorted(by) if g != TARGET]
    mean_log = np.array([[np.log1p(by[g][k]) for g in others] for k in keys]).mean(axis=1)
    return {
        "prompts": len(keys),
        "tau_of_each_other_generator": {g: kendall_tau([by[g][k] for k in keys], truth) for g in others},
        "tau_of_the_mean_log_length_of_the_other_13": kendall_tau(mean_log, truth),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench/results/ranker_remaining.json"))
    ap.add_argument("--eval-out", default=str(ROOT / "bench/results/ranker_remaining_eval.json"),
                    help="the first seed's pooled eval JSON (for bench/sim_reestimate.py)")  # fmt: skip
    ap.add_argument("--stack-prompt-score", action="store_true", help="ablation: the prompt-only score as a feature")
    ap.add_argument("--noise-floor-only", action="store_true", help="only (re)compute the noise floor into --out")
    args = ap.parse_args()
    llama = load_examples([DATA / TARGET / "model_outputs.json"], count_tokens)
    everyone = load_examples(sorted(DATA.glob("*/model_outputs.json")), count_tokens)
    if args.noise_floor_only:
        doc = json.loads(Path(args.out).read_text())
        doc["noise_floor"] = noise_floor(everyone)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc["noise_floor"], indent=2))
        return 0
    embedder = make_embedder("static", progress=False)
    variants = {"Llama-3-8B answers": llama, "all 14 generators' answers": everyone}
    results: dict[str, dict[str, list[float]]] = {}
    t0 = time.time()
    for seed in args.seeds:
        for name, answers in variants.items():
            options = TrainOptions(seed=seed, progress=False, num_threads=args.threads,
                                   stack_prompt_score=args.stack_prompt_score)  # fmt: skip
            res = train_ranker(llama, options, embedder, remaining_examples=answers)
            seen = set(res.train_keys)
            prompt_only, _ = evaluate(res.ranker, llama, seen, seed=seed)
            rem = evaluate_remaining(res.ranker, llama, seen, KS)
            row = results.setdefault(name, {})
            row.setdefault("prompt_only_tau", []).append(prompt_only["kendall_tau"])
            for k in KS:
                row.setdefault(f"remaining_tau_{k}", []).append(rem["remaining_tau"][str(k)])
                row.setdefault(f"prompt_only_tau_{k}", []).append(rem["remaining_tau_prompt_only"][str(k)])
            row.setdefault("reestimate_ms_p99", []).append(rem["remaining_latency_ms_per_request_batch32"]["p99"])
            row.setdefault("rows", []).append(rem["remaining_rows"])  # type: ignore[arg-type]
            if name != "Llama-3-8B answers" and seed == args.seeds[0]:
                Path(args.eval_out).write_text(json.dumps({**prompt_only, **rem}, indent=2) + "\n")
            print(f"seed {seed}, {name}: prompt tau {prompt_only['kendall_tau']:.3f}, remaining tau "
                  + ", ".join(f"k={k} {rem['remaining_tau'][str(k)]:.3f} (prompt {rem['remaining_tau_prompt_only'][str(k)]:.3f})"
                              for k in KS), flush=True)  # fmt: skip
    doc = {
        "protocol": f"{TARGET}, 80/20 split by prompt, seeds {args.seeds}; tokens: the ranker's WordPiece tokenizer",
        "variants": {name: {k: (_mean_sd(v) if k != "rows" else v) for k, v in row.items()} for name, row in results.items()},
        "noise_floor": noise_floor(everyone),
        "stack_prompt_score": args.stack_prompt_score,
        "targets": {"prompt_only_tau": 0.45, "remaining_tau_32": 0.45, "remaining_tau_64": 0.45, "reestimate_ms_p99": 2.0},
        "wall_s": round(time.time() - t0, 1),
        "command": "python bench/ranker_remaining.py " + " ".join(sys.argv[1:]),
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    for name, row in doc["variants"].items():
        print(f"== {name}: " + ", ".join(f"{k} {v['mean']:.3f}±{v['sd']:.3f}" for k, v in row.items() if k != "rows"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
