"""The OpenAI-compatible front, driven by the real `openai` package (sync and async, streamed and
not) against a dispatcher with simulated engines: the same queue, policy and auth as gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from llmfleet.core.clock import wait_for_condition
from llmfleet.core.config import SchedulingConfig
from llmfleet.dispatcher import serve_dispatcher
from llmfleet.dispatcher.model import DispatcherSettings
from llmfleet.engine.simulated import SimulatedEngineClient, SimulatedEngineConfig
from llmfleet.sidecar import serve_sidecar


@pytest.fixture
async def engines() -> AsyncIterator[list[SimulatedEngineClient]]:
    es = [SimulatedEngineClient(SimulatedEngineConfig(step_base_s=0.002, step_per_seq_s=0.0, max_num_seqs=64,
                                                      name="sim-model")) for _ in range(2)]  # fmt: skip
    yield es
    for e in es:
        await e.aclose()


async def _fleet(engines: list[SimulatedEngineClient], **kwargs: Any):
    sidecars = [await serve_sidecar(e, load_interval_s=0.05, max_num_seqs=64) for e in engines]
    handle = await serve_dispatcher(pods={f"p{i}": s.address for i, s in enumerate(sidecars)}, openai_port=0,
                                    config=SchedulingConfig(policy="llmfleet"), **kwargs)  # fmt: skip
    if sidecars:
        await handle.wait_ready(len(sidecars), timeout_s=30)
    return handle, sidecars


async def _stop(handle, sidecars) -> None:
    await handle.stop()
    for s in sidecars:
        await s.stop()


@pytest.fixture
async def fleet(engines):
    handle, sidecars = await _fleet(engines)
    yield handle
    await _stop(handle, sidecars)


def _clients(handle, key: str = "none") -> tuple[openai.OpenAI, openai.AsyncOpenAI]:
    url = handle.openai_base_url
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0), openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0)


async def test_models_and_completions_sync_and_async_streamed_and_not(fleet) -> None:
    sync, aio = _clients(fleet)
    models = await asyncio.to_thread(sync.models.list)
    assert [m.id for m in models.data] == ["sim-model"]
    args = dict(model="sim-model", prompt="Hello, fleet", max_tokens=12, temperature=1.0, seed=5, extra_body={"ignore_eos": True})
    whole = await asyncio.to_thread(sync.completions.create, **args)
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 12
    assert whole.usage.prompt_tokens == len(b"Hello, fleet") and whole.usage.total_tokens == whole.usage.prompt_tokens + 12
    stream = await aio.completions.create(**args, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    batch = await aio.completions.create(model="sim-model", prompt=["Hello", "Hi"], max_tokens=3, extra_body={"ignore_eos": True})
    assert [c.index for c in batch.choices] == [0, 1] and batch.usage.completion_tokens == 6


async def test_chat_uses_the_models_template_and_streams_the_same_text(fleet) -> None:
    sync, aio = _clients(fleet)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    whole = await asyncio.to_thread(sync.chat.completions.create, model="sim-model", messages=messages,
                                    max_completion_tokens=10, seed=1, extra_body={"ignore_eos": True})  # fmt: skip
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    templated = "system: Be brief.\nuser: Hi!\nassistant:"  # the simulated model's own template
    assert whole.usage.prompt_tokens == len(templated.encode())
    stream = await aio.chat.completions.create(model="sim-model", messages=messages, max_tokens=10, seed=1, stream=True,
                                               extra_body={"ignore_eos": True})  # fmt: skip
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content


async def test_stop_sequences_cut_the_text_as_vllm_does(fleet) -> None:
    _, aio = _clients(fleet)
    free = await aio.completions.create(model="sim-model", prompt=[9, 9, 9], max_tokens=20, extra_body={"ignore_eos": True})
    text = free.choices[0].text
    stop = text[20:25]
    cut = await aio.completions.create(model="sim-model", prompt=[9, 9, 9], max_tokens=20, stop=[stop],
                                       extra_body={"ignore_eos": True})  # fmt: skip
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == text[: text.index(stop)]


@pytest.mark.parametrize("kwargs, status, fragment", [
    (dict(n=2), 400, "n > 1"),
    (dict(logprobs=2), 400, "logprobs"),
    (dict(extra_body={"best_of": 3}), 400, "best_of"),
    (dict(extra_body={"typo_param": 1}), 400, "unknown or unsupported parameter 'typo_param'"),
    (dict(temperature=-1), 400, "temperature"),
    (dict(model="gpt-4"), 404, "does not exist"),
    (dict(max_tokens=100_000), 400, "exceeds the model's context"),
])  # fmt: skip
async def test_bad_requests_get_openai_errors(fleet, kwargs, status, fragment) -> None:
    _, aio = _clients(fleet)
    args = dict(model="sim-model", prompt="x", max_tokens=4) | kwargs
    with pytest.raises(openai.APIStatusError) as err:
        await aio.completions.create(**args)
    assert err.value.status_code == status and fragment in err.value.message
    assert set(err.value.body) >= {"message", "type", "code"}


async def test_chat_refuses_tools_by_name(fleet) -> None:
    _, aio = _clients(fleet)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(openai.BadRequestError, match="tools"):
        await aio.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "x"}], tools=[tool])


async def test_auth_and_unavailable_and_deadline(engines) -> None:
    handle, sidecars = await _fleet(engines, auth_token="s3cret")
    try:
        sync, aio = _clients(handle, key="wrong")
        with pytest.raises(openai.AuthenticationError):
            await aio.models.list()
        _, aio = _clients(handle, key="s3cret")
        assert (await aio.models.list()).data
        slow = await aio.completions.with_raw_response.create(
            model="sim-model", prompt="x", max_tokens=1, extra_headers={"x-llmfleet-deadline-ms": "5000"})  # fmt: skip
        assert slow.http_response.status_code == 200
        with pytest.raises(openai.APIStatusError) as err:
            await aio.completions.create(model="sim-model", prompt="x", max_tokens=2000, extra_body={"ignore_eos": True},
                                         extra_headers={"x-llmfleet-deadline-ms": "50"})  # fmt: skip
        assert err.value.status_code == 504
    finally:
        await _stop(handle, sidecars)
    empty, _ = await _fleet([])
    try:
        with pytest.raises(openai.APIStatusError) as err:
            await _clients(empty)[1].completions.create(model="llmfleet", prompt="text needs an engine", max_tokens=2)
        assert err.value.status_code == 503
    finally:
        await _stop(empty, [])


async def test_a_full_queue_answers_429_with_retry_after(engines) -> None:
    handle, sidecars = await _fleet(engines[:1], settings=DispatcherSettings(max_queue=1))
    try:
        _, aio = _clients(handle)
        busy = [asyncio.create_task(aio.completions.create(model="sim-model", prompt=[5], max_tokens=400,
                                                          extra_body={"ignore_eos": True})) for _ in range(70)]  # fmt: skip
        await wait_for_condition(lambda: handle.dispatcher.backlog() >= 1, 10, what="a backlog")
        with pytest.raises(openai.RateLimitError) as err:
            await aio.completions.create(model="sim-model", prompt=[5], max_tokens=4)
        assert int(err.value.response.headers["retry-after"]) >= 1
        for t in busy:
            t.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
    finally:
        await _stop(handle, sidecars)


async def test_a_disconnected_stream_frees_the_engine(fleet, engines) -> None:
    _, aio = _clients(fleet)
    stream = await aio.completions.create(model="sim-model", prompt=[7, 7], max_tokens=2000, stream=True,
                                          extra_body={"ignore_eos": True})  # fmt: skip
    async for _ in stream:
        break
    assert sum(len(e._running) for e in engines) == 1
    await stream.close()
    # 2,000 tokens take at least 4 s at 2 ms a step: only an abort empties the engine within 3 s.
    await wait_for_condition(lambda: sum(len(e._running) + len(e._waiting) for e in engines) == 0 and not
                             fleet.dispatcher.running, 3, what="the engine work aborted")  # fmt: skip


async def test_200_concurrent_streams_complete_exactly(fleet) -> None:
    _, aio = _clients(fleet)

    async def one(i: int) -> tuple[str, str]:
        args = dict(model="sim-model", prompt=[100 + i % 17, 3, 4], max_tokens=8, extra_body={"ignore_eos": True})
        stream = await aio.completions.create(**args, stream=True)
        streamed = "".join([c.choices[0].text async for c in stream if c.choices])
        whole = await aio.completions.create(**args)
        return streamed, whole.choices[0].text

    pairs = await asyncio.gather(*(one(i) for i in range(200)))
    assert all(s == w and w for s, w in pairs)
    assert fleet.dispatcher.completed == 400


async def test_a_client_that_gives_up_on_a_whole_response_frees_the_engine(fleet, engines) -> None:
    _, aio = _clients(fleet)
    call = asyncio.create_task(aio.completions.create(model="sim-model", prompt=[8, 8], max_tokens=2000,
                                                      extra_body={"ignore_eos": True}))  # fmt: skip
    await wait_for_condition(lambda: sum(len(e._running) for e in engines) == 1, 10, what="the request running")
    call.cancel()  # the HTTP connection closes before any response
    await asyncio.gather(call, return_exceptions=True)
    # As above: finishing naturally would take at least 4 s.
    await wait_for_condition(lambda: sum(len(e._running) + len(e._waiting) for e in engines) == 0 and not
                             fleet.dispatcher.running, 3, what="the engine work aborted")  # fmt: skip


async def test_an_out_of_vocabulary_token_id_is_a_bad_request_and_cools_no_pod(fleet) -> None:
    """vLLM answers such ids with a 500; retried on every pod, one bad client would cool them all."""
    from llmfleet.client import DispatcherClient

    await wait_for_condition(lambda: all(p.vocab_size == 4096 for p in fleet.dispatcher.pods.values()), 10,
                             what="the vocabulary reported")  # fmt: skip
    async with DispatcherClient(fleet.address) as c:
        with pytest.raises(Exception, match="outside the model's vocabulary") as err:
            await c.generate(prompt_ids=[5, 4096], max_tokens=2, timeout=10)
    assert "INVALID_ARGUMENT" in str(err.value)
    _, aio = _clients(fleet)
    with pytest.raises(openai.BadRequestError, match="token id 9999"):
        await aio.completions.create(model="sim-model", prompt=[9999], max_tokens=2)
    assert len(fleet.dispatcher.healthy_pods()) == 2 and fleet.dispatcher.failovers == 0


async def test_a_body_over_the_request_limit_is_refused_before_it_is_read(fleet) -> None:
    _, aio = _clients(fleet)
    with pytest.raises(openai.APIStatusError) as err:
        await aio.completions.create(model="sim-model", prompt="x" * 3_000_000, max_tokens=2)
    assert err.value.status_code == 413 and "limit is 2097152" in err.value.message
    with pytest.raises(openai.BadRequestError, match="cannot hold it"):  # under the limit, over the context
        await aio.completions.create(model="sim-model", prompt="x" * 1_000_000, max_tokens=2)


async def test_chat_without_max_tokens_runs_to_the_end_of_the_context(fleet) -> None:
    """OpenAI's chat default: the rest of the context (here 2,048 tokens), known only once the
    messages are tokenized; completions default to 16 tokens."""
    _, aio = _clients(fleet)
    chat = await aio.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "Hi"}],
                                             extra_body={"ignore_eos": True})  # fmt: skip
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage.prompt_tokens + chat.usage.completion_tokens == 2048
    plain = await aio.completions.create(model="sim-model", prompt="Hi", extra_body={"ignore_eos": True})
    assert plain.usage.completion_tokens == 16
