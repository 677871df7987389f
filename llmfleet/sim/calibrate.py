"""Measure a live vLLM OpenAI-compatible server and fit a simulator cost model to it.

Probes (all with token-id prompts and ``ignore_eos`` so lengths are exact):

* prefill: one request per prompt length with ``max_tokens=1``; its latency is the prefill
  time of that many tokens (median of `repeats`);
* decode: `c` concurrent requests with a short prompt and ``max_tokens=M``; the time per
  decode step at batch `c` is ``(elapsed - prefill(c * prompt)) / M``.

A least-squares line through the decode points gives ``decode_base_s`` and
``decode_per_seq_s``; the prefill points become the piecewise-linear knots. The JSON it
writes loads with ``llmfleet sim run --cost-model FILE``. What a live fleet adds to these
quiet-engine probes is measured in `llmfleet.sim.fleet_calibrate`.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from llmfleet.core.clock import Clock, RealClock
from llmfleet.sim.costmodel import CostModel


@dataclass(frozen=True)
class Measurements:
    prefill: list[tuple[int, float]]  # (prompt tokens, seconds)
    decode: list[tuple[int, float]]  # (concurrency, seconds per decode step)


def _prompt(n: int, offset: int) -> list[int]:
    # Distinct token ids per probe so the engine's prefix cache cannot shortcut the prefill.
    return [(offset * 7919 + i) % 1000 + 10 for i in range(n)]


async def measure(
    client: object,
    prompt_lengths: Sequence[int] = (16, 64, 256, 1024),
    concurrency: Sequence[int] = (1, 4, 16),
    decode_tokens: int = 32,
    decode_prompt: int = 16,
    repeats: int = 3,
    clock: Clock | None = None,
) -> Measurements:
    """Run the probes against an `llmfleet.engine.client.EngineClient`-like object."""
    clock = clock or RealClock()
    complete = client.complete  # type: ignore[attr-defined]
    probe = 0
    prefill: list[tuple[int, float]] = []
    for n in prompt_lengths:
        times = []
        for _ in range(repeats):
            probe += 1
            t0 = clock.now()
            await complete(_prompt(n, probe), 1, ignore_eos=True, request_id=f"cal-p{n}-{probe}")
            times.append(clock.now() - t0)
        prefill.append((int(n), statistics.median(times)))
    short_prefill = _interp(prefill, decode_prompt)
    decode: list[tuple[int, float]] = []
    for c in concurrency:
        times = []
        for _ in range(repeats):
            probe += 1
            t0 = clock.now()
            await asyncio.gather(
                *(
                    complete(
                        _prompt(decode_prompt, probe * 1000 + i),
                        decode_tokens,
                        ignore_eos=True,
                        request_id=f"cal-d{c}-{probe}-{i}",
                    )
                    for i in range(c)
                )
            )
            times.append(clock.now() - t0)
        elapsed = statistics.median(times)
        per_step = max(
            1e-6,
            (elapsed - _interp(prefill, decode_prompt * c) if c > 1 else elapsed - short_prefill)
            / decode_tokens,
        )
        decode.append((int(c), per_step))
    return Measurements(prefill=prefill, decode=decode)


def _interp(points: Sequence[tuple[int, float]], x: float) -> float:
    pts = sorted(points)
    if x <= pts[0][0]:
        return pts[0][1] * x / pts[0][0] if pts[0][0] else pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    (x0, y0), (x1, y1) = pts[-2], pts[-1]
    return y1 + (y1 - y0) * (x - x1) / (x1 - x0)


def fit(m: Measurements, name: str, kv_capacity_tokens: int, source: str) -> CostModel:
    if len(m.prefill) < 2 or not m.decode:
        raise ValueError("need at least two prefill lengths and one decode concurrency")
    if len(m.decode) >= 2:
        xs = [c for c, _ in m.decode]
        ys = [t for _, t in m.decode]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
        slope = max(0.0, slope)
        base = my - slope * mx
        if base <= 0.0:
            # Timing noise made the line steeper than a decode step allows (every step has a
            # fixed cost): anchor it at the smallest batch, whose step time is at least half fixed.
            c0, y0 = min(m.decode)
            slope = min(slope, y0 / (2 * c0))
            base = y0 - slope * c0
    else:
        base, slope = m.decode[0][1], 0.0
    knots = sorted(dict(m.prefill).items())
    xs_k = (0.0, *[float(x) for x, _ in knots])
    ys_k = (min(base, knots[0][1]), *[max(0.0, y) for _, y in knots])
    # Enforce increasing knots in tokens (already) and non-decreasing times for a sane model.
    ys_mono = [ys_k[0]]
    for y in ys_k[1:]:
        ys_mono.append(max(y, ys_mono[-1]))
    return CostModel(
        name=name,
        prefill_knots_tokens=xs_k,
        prefill_knots_s=tuple(ys_mono),
        decode_base_s=base,
        decode_per_seq_s=slope,
        decode_per_ctx_token_s=0.0,
        overlap_s=base,
        kv_capacity_tokens=kv_capacity_tokens,
        source=source,
    )


async def calibrate_engine(
    url: str,
    prompt_lengths: Sequence[int],
    concurrency: Sequence[int],
    decode_tokens: int,
    repeats: int,
    kv_capacity_tokens: int | None,
    timeout: float = 120.0,
) -> CostModel:
    from llmfleet.engine.client import EngineClient

    async with EngineClient(url, timeout=timeout) as client:
        if not await client.health():
            raise RuntimeError(f"engine at {url} is not healthy (GET /health did not return 200)")
        model = await client.model()
        if kv_capacity_tokens is None:
            # vLLM reports its KV pool in `vllm:cache_config_info`; the client parses it.
            from llmfleet.engine.errors import EngineError

            try:
                kv_capacity_tokens = (await client.load()).kv_capacity_tokens or None
            except EngineError:
                kv_capacity_tokens = None
        m = await measure(client, prompt_lengths, concurrency, decode_tokens, repeats=repeats)
    return fit(
        m,
        name=f"calibrated:{model}",
        kv_capacity_tokens=kv_capacity_tokens or (1 << 16),
        source=f"llmfleet sim calibrate --engine {url}",
    )
