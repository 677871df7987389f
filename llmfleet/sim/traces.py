"""Request traces for the simulator: Azure LLM inference CSVs and the Mooncake JSONL trace.

Arrival times are seconds from the first request, divided by ``rate_scale`` (2.0 replays the
trace twice as fast). Only token counts and prefix hashes are known; no prompt text.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from llmfleet.sim.costmodel import DATA_DIR

KNOWN_TRACES = {
    "conv": DATA_DIR / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv",
    "code": DATA_DIR / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv",
    "mooncake": DATA_DIR / "mooncake_fast25" / "synthetic_trace.jsonl",
}


@dataclass(frozen=True, slots=True)
class TraceRequest:
    request_id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()


def resolve_trace(name_or_path: str) -> Path:
    if name_or_path in KNOWN_TRACES:
        return KNOWN_TRACES[name_or_path]
    p = Path(name_or_path)
    if not p.exists():
        raise FileNotFoundError(
            f"trace {name_or_path!r} not found; give a path or one of: {', '.join(KNOWN_TRACES)}"
        )
    return p


def _parse_azure_time(text: str) -> float:
    # "2023-11-16 18:15:46.6805900": seven fractional digits, one more than datetime accepts.
    head, _, frac = text.strip().partition(".")
    base = datetime.strptime(head, "%Y-%m-%d %H:%M:%S").timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def load_trace(name_or_path: str, rate_scale: float = 1.0, limit: int | None = None) -> list[TraceRequest]:
    """Load a trace, sorted by arrival. Raises ValueError with the offending line on bad input."""
    if rate_scale <= 0:
        raise ValueError("rate_scale must be positive")
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    path = resolve_trace(name_or_path)
    raw: list[tuple[float, int, int, tuple[int, ...]]] = []
    with open(path, newline="") as fh:
        if path.suffix == ".jsonl":
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    raw.append(
                        (
                            float(rec["timestamp"]) / 1000.0,
                            int(rec["input_length"]),
                            int(rec["output_length"]),
                            tuple(int(h) for h in rec.get("hash_ids", ())),
                        )
                    )
                except (KeyError, ValueError, TypeError) as exc:
                    raise ValueError(f"{path}:{lineno}: not a Mooncake trace record ({exc})") from exc
                if limit is not None and len(raw) >= limit:
                    break
        else:
            reader = csv.DictReader(fh)
            need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
            if not reader.fieldnames or not need <= set(reader.fieldnames):
                raise ValueError(f"{path}: expected CSV columns {sorted(need)}, got {reader.fieldnames}")
            for lineno, row in enumerate(reader, 2):
                try:
                    raw.append(
                        (
                            _parse_azure_time(row["TIMESTAMP"]),
                            int(row["ContextTokens"]),
                            int(row["GeneratedTokens"]),
                            (),
                        )
                    )
                except ValueError as exc:
                    raise ValueError(f"{path}:{lineno}: bad Azure trace row ({exc})") from exc
                if limit is not None and len(raw) >= limit:
                    break
    if not raw:
        raise ValueError(f"{path}: trace is empty")
    raw.sort(key=lambda r: r[0])
    t0 = raw[0][0]
    return [
        TraceRequest(
            request_id=f"r{i}",
            arrival_s=(t - t0) / rate_scale,
            prompt_tokens=max(1, p),
            output_tokens=max(1, o),
            hash_ids=h,
        )
        for i, (t, p, o, h) in enumerate(raw)
    ]
