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
        # Only the two byte tokens of "é" (0xC3, 0xA9): characters split across tokens and slices.
        "multi-byte characters split by tokens": dict(ignore_eos=True, logit_bias={131: 100.0, 106: 100.0}),
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


def _resume_request(base, messages) -> Any:
    """The request a client sends to continue after `messages` (see `DispatcherClient.resumable_stream`)."""
    from llmfleet.v1 import dispatcher_pb2

    req = dispatcher_pb2.GenerateRequest()
    req.CopyFrom(base)
    req.request_id = ""
    for m in messages:
        req.resume.token_ids.extend(m.token_ids)
        req.resume.text += m.text
        if m.HasField("resume_state"):
            req.resume.state.CopyFrom(m.resume_state)
    return req


async def test_a_generation_resumed_from_any_message_continues_exactly(engine, two_pods, prompt, free_run) -> None:
    """The resume protocol (a client continuing on another dispatcher) is exact at every point of
    the stream: mid-character (text still pending) and mid-stop-string (text held back) included.
    The first dispatcher runs slices of one token, so each message holds one token and every
    position can be cut; a second one, with its own slicing, continues."""
    ids, pieces = free_run
    cases = _cases(ids, pieces)
    first = await serve_dispatcher(pods=two_pods, config=SchedulingConfig(policy="fcfs-rr"))
    second = await serve_dispatcher(pods=two_pods, config=SchedulingConfig(policy="fcfs-rr"))
    seen_pending = seen_held = False
    try:
        await first.wait_ready(2, timeout_s=60)
        await second.wait_ready(2, timeout_s=60)
        first.dispatcher.policy = EveryBoundaryMoves(1)
        second.dispatcher.policy = EveryBoundaryMoves(5)
        async with DispatcherClient(first.address) as c1, DispatcherClient(second.address) as c2:
            for name, case in cases.items():
                base = c1.request(prompt_ids=prompt, max_tokens=N, **case)
                whole = [m async for m in c1.stub.Generate(base, timeout=300)]
                ref_ids = [t for m in whole for t in m.token_ids]
                ref_text = "".join(m.text for m in whole)
                cuts = [i for i, m in enumerate(whole[:-1]) if m.token_ids and (
                    i % 4 == 0 or m.resume_state.pending_text_tokens or m.resume_state.held_text)]  # fmt: skip
                for cut in cuts:
                    head = whole[: cut + 1]
                    seen_pending |= head[-1].resume_state.pending_text_tokens > 0
                    seen_held |= bool(head[-1].resume_state.held_text)
                    tail = [m async for m in c2.stub.Generate(_resume_request(base, head), timeout=300)]
                    where = f"{name}, resumed after message {cut}"
                    assert [t for m in head + tail for t in m.token_ids] == ref_ids, where
                    assert "".join(m.text for m in head + tail) == ref_text, where
                    assert tail[-1].finish_reason == whole[-1].finish_reason, where
                    k = sum(len(m.token_ids) for m in head)
                    assert tail[-1].usage.completion_tokens == len(ref_ids), where
                    assert tail[-1].usage.resumed_tokens == k, where
    finally:
        await first.stop()
        await second.stop()
    assert seen_pending, "some cut fell inside a multi-byte character"
    assert seen_held, "some cut fell while text was held back for a stop string"
