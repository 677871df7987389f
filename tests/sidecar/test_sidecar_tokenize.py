"""Prompts are tokenized in the sidecar with the engine's own tokenizer once it is shown to agree
with the engine, and by the engine otherwise (the simulated engine; the same sidecar code as in
front of vLLM, whose agreement tests/sidecar/test_sidecar_real.py checks)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from tokenizers import Tokenizer
from tokenizers.pre_tokenizers import Whitespace

from llmfleet.core.clock import wait_for_condition
from llmfleet.engine.errors import EngineError
from llmfleet.engine.simulated import SimulatedEngineClient, SimulatedEngineConfig, simulated_tokenizer
from llmfleet.sidecar import SidecarHandle, serve_sidecar
from llmfleet.v1 import sidecar_pb2, sidecar_pb2_grpc

TEXTS = ("How do I dice without slicing my finger?", "  two  spaces\tand a tab", "ünïcödé 数字 🙂 <s>")


class CountingEngine(SimulatedEngineClient):
    """The simulated engine, tokenizing with its own tokenizer and counting /tokenize calls;
    `skew` adds a token to every answer (a tokenizer set-up that differs from the engine's). The
    plain simulated engine's /tokenize counts bytes, so a sidecar in front of it always asks it."""

    def __init__(self, skew: bool = False, failing: bool = False) -> None:
        super().__init__(SimulatedEngineConfig(max_num_seqs=4, step_base_s=0.002))
        self.tokenize_calls = 0
        self.skew = skew
        self.failing = failing  # /tokenize answers with a server error while set

    async def tokenize(self, text: str) -> list[int]:
        self.tokenize_calls += 1
        if self.failing:
            raise EngineError("/tokenize: 503 Service Unavailable")
        ids = (await self.tokenizer()).encode(text, add_special_tokens=True).ids
        return [*ids, 7] if self.skew else ids

    async def tokenizer(self) -> Tokenizer:
        tok = simulated_tokenizer()
        tok.pre_tokenizer = Whitespace()  # one id per word, so prompts are many tokens long
        return tok


@contextlib.asynccontextmanager
async def _serve(engine: SimulatedEngineClient) -> AsyncIterator[tuple[SidecarHandle, sidecar_pb2_grpc.SidecarStub]]:
    handle = await serve_sidecar(engine, max_num_seqs=4, load_interval_s=0.05)
    try:
        await wait_for_condition(lambda: handle.service.tokenizer.tokenizes_locally is not None, 10, what="the tokenizer probes")
        async with grpc.aio.insecure_channel(handle.address) as channel:
            yield handle, sidecar_pb2_grpc.SidecarStub(channel)
    finally:
        await handle.stop()


@pytest.mark.parametrize("skew", [False, True], ids=["agrees", "differs"])
async def test_prompts_are_tokenized_locally_only_when_the_tokenizer_agrees(skew: bool) -> None:
    engine = CountingEngine(skew)
    async with _serve(engine) as (handle, stub):
        assert handle.service.tokenizer.tokenizes_locally is (not skew)
        before = engine.tokenize_calls
        for text in TEXTS:
            got = list((await stub.Tokenize(sidecar_pb2.TokenizeRequest(text=text))).token_ids)
            engine.skew = False
            reference = await engine.tokenize(text)
            engine.skew = skew
            assert got == ([*reference, 7] if skew else reference), text
        # Each reference above is one call; only a differing tokenizer sends prompts to the engine.
        assert engine.tokenize_calls - before == len(TEXTS) * (2 if skew else 1)


async def test_a_probe_the_engine_cannot_answer_is_retried_without_marking_it_unhealthy() -> None:
    engine = CountingEngine(failing=True)
    handle = await serve_sidecar(engine, max_num_seqs=4, load_interval_s=0.05)
    try:
        await wait_for_condition(lambda: handle.service.engine_healthy and engine.tokenize_calls >= 2, 10,
                                 what="healthy while the probes fail")  # fmt: skip
        assert handle.service.tokenizer.tokenizes_locally is None
        engine.failing = False
        await wait_for_condition(lambda: handle.service.tokenizer.tokenizes_locally is True, 10, what="the probes, answered")
    finally:
        await handle.stop()


async def test_the_plain_simulated_engine_keeps_tokenizing_prompts() -> None:
    async with _serve(SimulatedEngineClient(SimulatedEngineConfig(max_num_seqs=4))) as (handle, _):
        assert handle.service.tokenizer.tokenizes_locally is False


async def test_a_long_prompt_is_tokenized_off_the_event_loop_with_the_same_ids() -> None:
    engine = CountingEngine()
    async with _serve(engine) as (_, stub):
        text = "word " * 5000  # past LOCAL_TOKENIZE_INLINE_CHARS
        got = list((await stub.Tokenize(sidecar_pb2.TokenizeRequest(text=text))).token_ids)
        assert got == await engine.tokenize(text) and len(got) == 5000
