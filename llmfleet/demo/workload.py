"""Turn a window of a production trace into a workload a small local fleet can serve.

Arrival gaps and the relative sizes of prompts and outputs come from the trace (Azure conv by
default); absolute sizes are scaled down and clipped to what a tiny CPU model serves in seconds.
Prompts are either random token ids from a seeded generator (lengths from the trace), or real
alpaca_eval prompts whose output lengths are a real model's answer lengths (arrival pattern from
the trace). The second lets the learned ranker see real text. The tiny model's output is junk
either way; the replayer makes each output exactly the planned length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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
    out = []
    for i, req in enumerate(window):
        n_prompt = int(min(spec.max_prompt_tokens, max(8, round(req.prompt_tokens * spec.prompt_scale))))
        n_out = int(
            min(spec.max_output_tokens, max(spec.min_output_tokens, round(req.output_tokens * spec.output_scale)))
        )
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
