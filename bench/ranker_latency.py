"""Ranker prediction latency and artifact size.

Times `load_predictor(DIR).predict(items)` for batches of 32 real alpaca_eval prompts: WordPiece
tokenisation, cheap features, embedding, LightGBM and calibration, everything a dispatcher pays
at admission. Reports wall and CPU time per request (p50/p99 over batches), batch-of-1 latency,
and the same for the contextual (full MiniLM) embedder for comparison. The machine is shared,
so wall p99 includes time the process was waiting for a core; CPU time shows the work itself.

Reproduce (about 2-4 minutes):
    .venv/bin/llmfleet ranker train --data ../shared/data/alpaca_eval/Meta-Llama-3-8B-Instruct/model_outputs.json \\
        --out /tmp/ranker-llama3-8b
    .venv/bin/llmfleet ranker train --embedder contextual \\
        --data ../shared/data/alpaca_eval/Meta-Llama-3-8B-Instruct/model_outputs.json --out /tmp/ranker-llama3-8b-ctx
    .venv/bin/python bench/ranker_latency.py --model /tmp/ranker-llama3-8b --contextual-model /tmp/ranker-llama3-8b-ctx
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

from llmfleet.core.prediction import PredictionInput  # noqa: E402
from llmfleet.ranker import load_predictor  # noqa: E402
from llmfleet.ranker.data import load_examples  # noqa: E402

DATA = Path(os.environ.get("LLMFLEET_SHARED_DATA", ROOT.parent / "shared" / "data")) / "alpaca_eval"


def time_batches(predictor, prompts: list[str], batch: int, batches: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    wall, cpu = [], []
    for b in range(batches + 3):
        idx = rng.choice(len(prompts), batch, replace=False)
        items = [PredictionInput(f"{b}-{i}", len(prompts[i]) // 4, prompts[i]) for i in idx]
        w0, c0 = time.perf_counter(), time.process_time()
        predictor.predict(items)
        w, c = time.perf_counter() - w0, time.process_time() - c0
        if b >= 3:  # warm-up batches excluded
            wall.append(w * 1000 / batch)
            cpu.append(c * 1000 / batch)
    return {
        "batch": batch,
        "batches": batches,
        "wall_ms_per_request": {"p50": float(np.percentile(wall, 50)), "p99": float(np.percentile(wall, 99)),
                                "max": float(np.max(wall))},
        "cpu_ms_per_request": {"p50": float(np.percentile(cpu, 50)), "p99": float(np.percentile(cpu, 99))},
    }


def artifact_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--model", required=True, help="static-embedder artifact (the default)")
    parser.add_argument("--contextual-model", default=None, help="optional contextual-embedder artifact")
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--out", default=str(ROOT / "bench/results/ranker_latency.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    prompts = [e.prompt for e in load_examples([DATA / "Meta-Llama-3-8B-Instruct" / "model_outputs.json"],
                                               lambda texts: [0] * len(texts))]
    report: dict = {"cpu": _cpu_name(), "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    t0 = time.perf_counter()
    static = load_predictor(args.model)
    report["static"] = {
        "load_seconds": time.perf_counter() - t0,
        "artifact_bytes": artifact_size(Path(args.model)),
        "batch32": time_batches(static, prompts, 32, args.batches),
        "batch1": time_batches(static, prompts, 1, args.batches),
    }
    print(json.dumps(report["static"], indent=1), flush=True)
    if args.contextual_model:
        import torch

        torch.set_num_threads(1)
        t0 = time.perf_counter()
        ctx = load_predictor(args.contextual_model)
        report["contextual"] = {
            "load_seconds": time.perf_counter() - t0,
            "artifact_bytes": artifact_size(Path(args.contextual_model)),
            "batch32": time_batches(ctx, prompts, 32, max(10, args.batches // 10)),
        }
        print(json.dumps(report["contextual"], indent=1), flush=True)
    report["load_average_at_end"] = os.getloadavg()
    report["command"] = "python bench/ranker_latency.py " + " ".join(sys.argv[1:])
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
