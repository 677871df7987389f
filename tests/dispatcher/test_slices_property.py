"""Slices are invisible, as a property: over random slice lengths, stop strings (most of them
straddling token boundaries), min_tokens, stop tokens and EOS, a request cut into slices and
moved at every boundary between two simulated engines ends exactly as one unsliced request to
the simulated engine does (text, token ids, finish reason, usage)."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmfleet.client import DispatcherClient
from llmfleet.core.config import SchedulingConfig
from llmfleet.core.sampling import SamplingParams
from llmfleet.dispatcher import serve_dispatcher
from llmfleet.engine.simulated import SimulatedEngineClient, SimulatedEngineConfig, word
from llmfleet.sidecar import serve_sidecar
from tests.dispatcher.test_slices_invisible import EveryBoundaryMoves

N = 24
PROMPT = [40, 41, 42, 43]


def _engine() -> SimulatedEngineClient:
    return SimulatedEngineClient(SimulatedEngineConfig(step_base_s=0.0, step_per_seq_s=0.0, prefill_per_token_s=0.0,
                                                       eos_every=40))  # fmt: skip


def _stop_strings(draw: st.DrawFn, text: str) -> list[str]:
    """Pieces of the free-running text (so they match), or syllable runs that may not."""
    out = []
    for _ in range(draw(st.integers(0, 3))):
        if text and draw(st.booleans()):
            start = draw(st.integers(0, len(text) - 1))
            out.append(text[start : start + draw(st.integers(1, 9))])
        else:
            out.append(word(draw(st.integers(4, 4095)))[: draw(st.integers(1, 8))])
    return out


async def _run(case: dict, s: int) -> None:
    reference_engine = _engine()
    engines = [_engine(), _engine()]
    sidecars = [await serve_sidecar(e, load_interval_s=0.05) for e in engines]
    handle = await serve_dispatcher(pods={"a": sidecars[0].address, "b": sidecars[1].address},
                                    config=SchedulingConfig(policy="fcfs-rr"))  # fmt: skip
    try:
        await handle.wait_ready(2, timeout_s=30)
        handle.dispatcher.policy = EveryBoundaryMoves(s)
        extra = {"min_tokens": case["min_tokens"]} if case["min_tokens"] else {}
        ref = await reference_engine.complete(PROMPT, N, ignore_eos=case["ignore_eos"], sampling=SamplingParams(
            stop=tuple(case["stop"]), stop_token_ids=tuple(case["stop_token_ids"]),
            include_stop_str_in_output=case["include_stop_str_in_output"], extra=extra))  # fmt: skip
        async with DispatcherClient(handle.address) as c:
            got = await c.generate(prompt_ids=PROMPT, max_tokens=N, timeout=60, **case)
        where = f"S={s} {case}"
        assert got.token_ids == list(ref.token_ids), where
        assert got.text == ref.text, where
        assert got.finish_reason == ref.finish_reason, where
        assert got.usage.completion_tokens == len(ref.token_ids), where
    finally:
        await handle.stop()
        for sc in sidecars:
            await sc.stop()
        await reference_engine.aclose()


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict, int]:
    free = asyncio.run(_engine().complete(PROMPT, N, ignore_eos=True))
    case = {
        "stop": _stop_strings(draw, free.text),
        "stop_token_ids": draw(st.lists(st.sampled_from(free.token_ids), max_size=1)),
        "include_stop_str_in_output": draw(st.booleans()),
        "min_tokens": draw(st.integers(0, 10)),
        "ignore_eos": draw(st.booleans()),
    }
    return case, draw(st.integers(1, N + 2))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_any_slicing_ends_like_one_unsliced_request(example: tuple[dict, int]) -> None:
    case, s = example
    asyncio.run(_run(case, s))
