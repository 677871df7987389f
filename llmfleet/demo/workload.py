"""Turn a window of a production trace into a workload a small local fleet can serve.

Arrival gaps and the relative sizes of prompts and outputs come from the trace (Azure conv by
default); absolute sizes are scaled down and clipped to what a tiny CPU model serves in seconds.
Prompts are either random token ids from a seeded generator (lengths from the trace), or real
alpaca_eval prompts whose output lengths are a real model's answer lengths (arrival pattern from
the trace). The second lets the learned ranker see real text. The tiny model's output is junk
either way; the replayer makes each output exactly the planned length.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from llmfleet.sim.traces import TraceRequest, load_trace


@dataclass(frozen=True)
class WorkloadRequest:
    request_id: str
    arrival_s: float
    prompt_token_ids: tuple[int, ...]
    output_tokens: int
    prompt_text: str | None = None
    trace_prompt_tokens: int = 0
    trace_output_tokens: int = 0


@dataclass(frozen=True)
class WorkloadSpec:
    trace: str = "conv"
    start_index: int = 2000
    count: int = 240
    rate: float = 4.0  # mean requests per second after rescaling arrival times
    prompt_scale: float = 0.1
    output_scale: float = 0.5
    max_prompt_tokens: int = 384
    max_output_tokens: int = 384
    min_output_tokens: int = 4
    seed: int = 0
    vocab_size: int = 4096
    # JSONL of {"prompt", "output_tokens"} (e.g. a ranker artifact's held-out prompts): real prompt
    # text and real answer lengths; arrival times still come from the trace.
    prompt_pool: str | None = None
    max_prompt_chars: int = 2000


def build_workload(spec: WorkloadSpec) -> list[WorkloadRequest]:
    """Pick `count` consecutive trace requests and rescale them; raises ValueError on a bad spec."""
    if spec.count < 1 or spec.rate <= 0:
        raise ValueError("count must be at least 1 and rate positive")
    trace = load_trace(spec.trace, limit=spec.start_index + spec.count)
    window: list[TraceRequest] = trace[spec.start_index : spec.start_index + spec.count]
    if len(window) < spec.count:
        raise ValueError(f"trace {spec.trace!r} has only {len(trace)} requests; lower start_index or count")
    t0 = window[0].arrival_s
    span = max(window[-1].arrival_s - t0, 1e-9)
    # Keep the trace's burstiness but set the mean rate to what the fleet can take.
    stretch = (len(window) / spec.rate) / span
    rng = random.Random(spec.seed)
    pool = load_prompt_pool(spec.prompt_pool) if spec.prompt_pool else None
    if pool is not None:
        rng.shuffle(pool)
        return [
            WorkloadRequest(
                request_id=f"demo-{i}",
                arrival_s=(req.arrival_s - t0) * stretch,
                prompt_token_ids=(),
                prompt_text=pool[i % len(pool)][0][: spec.max_prompt_chars],
                output_tokens=_scaled_output(pool[i % len(pool)][1], spec),
                trace_prompt_tokens=req.prompt_tokens,
                trace_output_tokens=req.output_tokens,
            )
            for i, req in enumerate(window)
        ]
    out = []
    for i, req in enumerate(window):
        n_prompt = int(min(spec.max_prompt_tokens, max(8, round(req.prompt_tokens * spec.prompt_scale))))
        n_out = _scaled_output(req.output_tokens, spec)
        # Token ids 4.. avoid the special tokens (<unk>, <s>, </s>, <pad>).
        ids = tuple(rng.randrange(4, spec.vocab_size) for _ in range(n_prompt))
        out.append(
            WorkloadRequest(
                request_id=f"demo-{i}",
                arrival_s=(req.arrival_s - t0) * stretch,
                prompt_token_ids=ids,
                output_tokens=n_out,
                trace_prompt_tokens=req.prompt_tokens,
                trace_output_tokens=req.output_tokens,
            )
        )
    return out


def _scaled_output(tokens: int, spec: WorkloadSpec) -> int:
    return int(min(spec.max_output_tokens, max(spec.min_output_tokens, round(tokens * spec.output_scale))))


def load_prompt_pool(path: str | Path) -> list[tuple[str, int]]:
    """(prompt, output tokens) pairs from JSONL; raises ValueError naming the bad line."""
    pool = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pool.append((str(row["prompt"]), int(row["output_tokens"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: expected {{prompt, output_tokens}} ({exc})") from exc
    if not pool:
        raise ValueError(f"{path}: no prompts")
    return pool
