"""Engine cost models: how long one vLLM iteration takes, fitted from GPU profiles or a live engine.

An iteration runs ``p`` prefill tokens (chunked prefill) and one decode step for ``b`` running
sequences holding ``ctx`` KV tokens in total. Its duration is::

    prefill_s(p) + decode_step_s(b, ctx) - overlap   (overlap only when both are present)

* ``prefill_s`` is piecewise-linear in the batched prefill tokens through measured knots
  (linear extrapolation past the last knot).
* ``decode_step_s(b, ctx) = base + per_seq * b + per_ctx_token * ctx``. It must stay linear in
  ``ctx``: the simulator advances many decode steps at once with the closed-form sum.
* ``overlap`` is the fixed per-forward-pass cost counted once when a chunk of prefill rides
  along with the decode batch.

Two terms are not the engine's but the data plane's, measured on a live fleet (zero for a bare
engine): ``dispatch_delay_s`` from the dispatcher's assignment to the engine starting the slice
(the sidecar, the engine's HTTP front, on a loaded host their wait for CPU), and the relay from
the engine to the client, ``first_token_relay_s`` for the first token and ``finish_relay_s`` for
the last (on a host short of CPU the per-token relay falls behind during a stream, so the two
differ). A third, ``end_notice_s``, is how long after the engine's last token of a slice the
dispatcher learns that the slot is free: a queue held at the dispatcher refills a slot only
then (and one dispatch delay later), while an engine's own queue refills it at once.

Models are saved as JSON (``llmfleet sim calibrate`` writes the same schema).
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

# The shared data folder sits beside the checkout (../shared/data); LLMFLEET_SHARED_DATA overrides it.
DATA_DIR = Path(
    os.environ.get("LLMFLEET_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)
SPLITWISE_CSV = DATA_DIR / "perf_profiles" / "splitwise_perf_model.csv"

# llama2-70b: 80 layers x 8 KV heads x 128 head dim x (K and V) x 2 bytes (fp16).
LLAMA2_70B_KV_BYTES_PER_TOKEN = 80 * 8 * 128 * 2 * 2
LLAMA2_70B_WEIGHT_BYTES = 140e9  # fp16
GPU_HBM_BYTES = 80e9  # both profiled GPUs (A100-80GB, H100-80GB)
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default
H100_HBM_BYTES_S = 3.35e12


@dataclass(frozen=True)
class CostModel:
    name: str
    prefill_knots_tokens: tuple[float, ...]
    prefill_knots_s: tuple[float, ...]
    decode_base_s: float
    decode_per_seq_s: float
    decode_per_ctx_token_s: float
    overlap_s: float = 0.0
    kv_capacity_tokens: int = 1 << 20  # suggested KV pool size for this engine
    source: str = ""
    dispatch_delay_s: float = 0.0  # assignment -> the engine starts the slice (live fleet only)
    first_token_relay_s: float = 0.0  # the engine's first token -> the client reads it (live fleet only)
    finish_relay_s: float = 0.0  # the engine's last token -> the client reads it (live fleet only)
    end_notice_s: float = 0.0  # the engine's last token of a slice -> the dispatcher frees its slot (live fleet only)

    def __post_init__(self) -> None:
        xs, ys = self.prefill_knots_tokens, self.prefill_knots_s
        if len(xs) != len(ys) or len(xs) < 2:
            raise ValueError("a cost model needs at least two prefill knots with matching times")
        if any(b <= a for a, b in zip(xs, xs[1:], strict=False)):
            raise ValueError("prefill knots must be strictly increasing in tokens")
        if (
            min(ys) < 0
            or self.decode_base_s < 0
            or self.decode_per_seq_s < 0
            or self.decode_per_ctx_token_s < 0
            or self.dispatch_delay_s < 0
            or self.first_token_relay_s < 0
            or self.finish_relay_s < 0
            or self.end_notice_s < 0
        ):
            raise ValueError("cost model times must be non-negative")

    def prefill_s(self, tokens: float) -> float:
        if tokens <= 0:
            return 0.0
        xs, ys = self.prefill_knots_tokens, self.prefill_knots_s
        i = bisect.bisect_left(xs, tokens)
        if i == 0:
            i = 1
        elif i == len(xs):
            i = len(xs) - 1
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return max(0.0, y0 + (y1 - y0) * (tokens - x0) / (x1 - x0))

    def decode_step_s(self, batch: int, ctx_tokens: float) -> float:
        if batch <= 0:
            return 0.0
        return self.decode_base_s + self.decode_per_seq_s * batch + self.decode_per_ctx_token_s * ctx_tokens

    def iteration_s(self, prefill_tokens: int, batch: int, ctx_tokens: float) -> float:
        p = self.prefill_s(prefill_tokens)
        d = self.decode_step_s(batch, ctx_tokens)
        if p > 0 and d > 0:
            return p + d - min(self.overlap_s, p, d)
        return p + d

    def decode_steps_s(self, k: int, batch: int, ctx_tokens: float) -> float:
        """Exact time of `k` consecutive decode steps; the context grows by `batch` each step."""
        if k <= 0 or batch <= 0:
            return 0.0
        per = self.decode_step_s(batch, ctx_tokens)
        return k * per + self.decode_per_ctx_token_s * batch * k * (k - 1) / 2.0

    def steps_within(self, elapsed_s: float, batch: int, ctx_tokens: float) -> int:
        """The smallest step count whose cumulative time reaches `elapsed_s` (at least 1)."""
        per = self.decode_step_s(batch, ctx_tokens)
        c2 = self.decode_per_ctx_token_s * batch / 2.0
        if elapsed_s <= 0:
            return 1
        if c2 <= 1e-18:
            j = math.ceil(elapsed_s / per - 1e-9) if per > 0 else 1
        else:
            # k*per + c2*k*(k-1) >= elapsed  ->  c2 k^2 + (per - c2) k - elapsed >= 0
            bq = per - c2
            j = math.ceil((-bq + math.sqrt(bq * bq + 4 * c2 * elapsed_s)) / (2 * c2) - 1e-9)
        j = max(1, j)
        while j > 1 and self.decode_steps_s(j - 1, batch, ctx_tokens) >= elapsed_s:
            j -= 1
        while self.decode_steps_s(j, batch, ctx_tokens) < elapsed_s - 1e-12:
            j += 1
        return j

    def recompute_s_per_token(self) -> float:
        x = self.prefill_knots_tokens[-1]
        return self.prefill_s(x) / x

    def slowed(self, k: float, prefill_k: float | None = None) -> CostModel:
        """The engine `k` times slower: decode and the per-pass overlap by `k`, prefill by
        `prefill_k` (default `k`: all alike). The data plane's delays are not the engine's and stay."""
        pk = k if prefill_k is None else prefill_k
        return replace(
            self,
            prefill_knots_s=tuple(s * pk for s in self.prefill_knots_s),
            decode_base_s=self.decode_base_s * k,
            decode_per_seq_s=self.decode_per_seq_s * k,
            decode_per_ctx_token_s=self.decode_per_ctx_token_s * k,
            overlap_s=self.overlap_s * k,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: dict) -> CostModel:
        data = dict(data)
        data["prefill_knots_tokens"] = tuple(float(x) for x in data["prefill_knots_tokens"])
        data["prefill_knots_s"] = tuple(float(x) for x in data["prefill_knots_s"])
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown cost model fields: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a cost model JSON ({exc})") from exc


def linear_cost_model(
    prefill_s_per_token: float,
    decode_step_s: float,
    decode_per_seq_s: float = 0.0,
    kv_capacity_tokens: int = 1 << 20,
) -> CostModel:
    """A hand-computable model for tests: prefill = a*p, decode step = c + d*b, no context term."""
    return CostModel(
        name="linear",
        prefill_knots_tokens=(0.0, 1e6),
        prefill_knots_s=(0.0, prefill_s_per_token * 1e6),
        decode_base_s=decode_step_s,
        decode_per_seq_s=decode_per_seq_s,
        decode_per_ctx_token_s=0.0,
        kv_capacity_tokens=kv_capacity_tokens,
        source="linear",
    )


def _lstsq(rows: list[list[float]], ys: list[float]) -> list[float]:
    import numpy as np

    coef, *_ = np.linalg.lstsq(np.asarray(rows, dtype=float), np.asarray(ys, dtype=float), rcond=None)
    return [float(c) for c in coef]


def fit_splitwise(
    path: str | Path = SPLITWISE_CSV,
    model: str = "llama2-70b",
    hardware: str = "h100-80gb",
    tensor_parallel: int = 8,
    max_decode_batch: int = 32,
) -> CostModel:
    """Fit prefill knots and the decode line from splitwise-sim's measured profile.

    Prefill knots are mean ``prompt_time`` against total batched prompt tokens
    (prompt_size x batch_size). The decode line is a least-squares fit of ``token_time`` on
    batch size and context, over batches up to `max_decode_batch`: the batch-64 rows sit
    above the line the others define (see bench/SIM.md), so they are excluded by default.
    """
    groups: dict[int, list[float]] = defaultdict(list)
    rows: list[list[float]] = []
    ys: list[float] = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            if (
                r["model"] != model
                or r["hardware"] != hardware
                or int(r["tensor_parallel"]) != tensor_parallel
            ):
                continue
            prompt, batch, out = int(r["prompt_size"]), int(r["batch_size"]), int(r["token_size"])
            groups[prompt * batch].append(float(r["prompt_time"]) / 1000.0)
            if batch <= max_decode_batch:
                rows.append([1.0, float(batch), float(batch * (prompt + out / 2.0))])
                ys.append(float(r["token_time"]) / 1000.0)
    if not groups:
        raise ValueError(f"{path}: no rows for {model} on {hardware} at TP{tensor_parallel}")
    base, per_seq, per_ctx = _lstsq(rows, ys)
    # Reading every KV byte once per step bounds the context term from below.
    kv_bytes_s = LLAMA2_70B_KV_BYTES_PER_TOKEN / (tensor_parallel * H100_HBM_BYTES_S)
    per_ctx = max(per_ctx, kv_bytes_s)
    knots = sorted((float(k), sum(v) / len(v)) for k, v in groups.items())
    # Below the smallest profiled prompt, a forward pass still costs about one decode step.
    xs = (0.0, *[k for k, _ in knots])
    ys_knots = (max(0.0, base), *[t for _, t in knots])
    return CostModel(
        name=f"{model}-tp{tensor_parallel}-{hardware}",
        prefill_knots_tokens=xs,
        prefill_knots_s=ys_knots,
        decode_base_s=max(0.0, base),
        decode_per_seq_s=max(0.0, per_seq),
        decode_per_ctx_token_s=per_ctx,
        overlap_s=max(0.0, base),
        kv_capacity_tokens=kv_pool_tokens(tensor_parallel),
        source=f"{Path(path).name} (splitwise-sim), decode fit on batch <= {max_decode_batch}",
    )


def kv_pool_tokens(tensor_parallel: int) -> int:
    """vLLM's KV pool for fp16 llama2-70b on `tensor_parallel` 80 GB GPUs: memory at the default
    utilisation minus the weights (8 GPUs: 1.33M tokens; 4 GPUs: 451k)."""
    free = tensor_parallel * GPU_HBM_BYTES * GPU_MEMORY_UTILIZATION - LLAMA2_70B_WEIGHT_BYTES
    if free <= 0:
        raise ValueError(f"llama2-70b does not fit on {tensor_parallel} GPUs of 80 GB")
    return int(free // LLAMA2_70B_KV_BYTES_PER_TOKEN)


# Named profiles: `--cost-model NAME` fits the splitwise data for that model, GPU and TP degree.
PROFILES = {
    "llama2-70b-tp8-h100": ("llama2-70b", "h100-80gb", 8),
    "llama2-70b-tp4-h100": ("llama2-70b", "h100-80gb", 4),
    "llama2-70b-tp8-a100": ("llama2-70b", "a100-80gb", 8),
    "llama2-70b-tp4-a100": ("llama2-70b", "a100-80gb", 4),
}


# The simulated engine's own timing (`llmfleet sidecar --engine simulated`, `llmfleet fleet up
# --engine simulated`), at its default step times.
SIMULATED_ENGINE = "simulated-engine"


def load_cost_model(spec: str | None) -> CostModel:
    """`None` or "default" -> llama2-70b TP8 H100 from splitwise; a name from `PROFILES`;
    "simulated-engine"; or a cost model JSON file path."""
    if spec in (None, "", "default"):
        return fit_splitwise()
    assert spec is not None
    if spec == SIMULATED_ENGINE:
        from llmfleet.engine.simulated import SimulatedEngineConfig

        return SimulatedEngineConfig().cost_model()
    if spec in PROFILES:
        model, hardware, tp = PROFILES[spec]
        return fit_splitwise(model=model, hardware=hardware, tensor_parallel=tp)
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(
            f"cost model {spec!r} is neither a profile ({', '.join([*PROFILES, SIMULATED_ENGINE])}) nor a file "
            "(write one with `llmfleet sim calibrate`)"
        )
    return CostModel.load(p)
