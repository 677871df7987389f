"""An unreachable, failing or silent engine gives a clear exception quickly, never a hang."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest

from llmfleet.engine.client import EngineClient
from llmfleet.engine.errors import (
    EngineProtocolError,
    EngineRequestError,
    EngineServerError,
    EngineTimeout,
    EngineUnavailable,
)
from llmfleet.engine.process import free_port


def _models_ok(request: httpx.Request) -> httpx.Response | None:
    if request.url.path == "/v1/models":
        return httpx.Response(200, json={"data": [{"id": "tiny"}]})
    return None


def _transport(handler) -> httpx.MockTransport:
    return httpx.MockTransport(lambda r: _models_ok(r) or handler(r))


async def test_unreachable_engine_raises_unavailable_fast() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    async with EngineClient(f"http://127.0.0.1:{port}", model="tiny") as client:
        with pytest.raises(EngineUnavailable, match="failed"):
            await client.complete("hi", 4)
        assert not await client.health()
        with pytest.raises(EngineUnavailable):
            await client.load()
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("status", "body", "exc", "retryable"),
    [
        (500, {"error": {"message": "engine core died"}}, EngineServerError, True),
        (503, "overloaded", EngineServerError, True),
        (400, {"error": {"message": "max_tokens must be positive"}}, EngineRequestError, False),
        (404, {"detail": "no such model"}, EngineRequestError, False),
    ],
)
async def test_http_errors_map_to_clear_exceptions(status, body, exc, retryable) -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body) if isinstance(body, dict) else httpx.Response(status, text=body)

    async with EngineClient("http://engine", transport=_transport(handler)) as client:
        with pytest.raises(exc) as info:
            await client.complete("hi", 4)
    assert info.value.retryable is retryable
    assert str(status) in str(info.value)


@pytest.mark.parametrize(
    "payload",
    [
        {"choices": []},
        {"choices": [{"text": "x", "token_ids": ["not-a-number"]}]},
        {"nothing": True},
    ],
)
async def test_malformed_completion_is_a_protocol_error(payload) -> None:
    async with EngineClient("http://engine", transport=_transport(lambda r: httpx.Response(200, json=payload))) as client:
        with pytest.raises(EngineProtocolError, match="malformed"):
            await client.complete("hi", 4)


async def test_malformed_stream_event_is_a_protocol_error() -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text='data: {"choices": [{"text": "a", "token_ids": [1]}]}\n\ndata: {broken\n\n')

    async with EngineClient("http://engine", transport=_transport(handler)) as client:
        got = []
        with pytest.raises(EngineProtocolError, match="malformed stream event"):
            async for chunk in client.stream("hi", 4):
                got.append(chunk)
    assert [c.token_ids for c in got] == [(1,)]


async def test_silent_engine_times_out_instead_of_hanging() -> None:
    # A socket that accepts connections but never answers.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    try:
        async with EngineClient(f"http://127.0.0.1:{port}", model="tiny", timeout=0.5) as client:
            with pytest.raises(EngineTimeout, match="timed out"):
                await asyncio.wait_for(client.complete("hi", 4), timeout=10)
    finally:
        server.close()


async def test_bad_arguments_are_rejected_before_sending() -> None:
    async with EngineClient("http://engine", transport=_transport(lambda r: httpx.Response(500))) as client:
        with pytest.raises(ValueError, match="max_tokens"):
            await client.complete("hi", 0)
        with pytest.raises(ValueError, match="empty"):
            await client.complete([], 4)


async def test_health_and_load_answer_within_the_probe_timeout_even_with_a_long_stream_timeout() -> None:
    """A hung engine (accepts the connection, never answers) is 'not healthy' in seconds, not after
    the 600 s a slice's stream may take."""
    import time

    import httpx

    from llmfleet.engine.client import EngineClient
    from llmfleet.engine.errors import EngineTimeout

    async def hang(request: httpx.Request) -> httpx.Response:
        timeout = request.extensions["timeout"]["read"]
        await asyncio.sleep(timeout)
        raise httpx.ReadTimeout("no answer", request=request)

    async with EngineClient("http://hung", timeout=600.0, probe_timeout=0.2, transport=httpx.MockTransport(hang)) as c:
        t0 = time.monotonic()
        assert await c.health() is False
        with pytest.raises(EngineTimeout):
            await c.load()
        assert time.monotonic() - t0 < 2.0
