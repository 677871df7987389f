"""`DispatcherClient`: call a dispatcher's Generate/Cancel/Stats from Python (grpc.aio).

    async with DispatcherClient("127.0.0.1:50051") as c:
        async for chunk in c.stream(prompt_ids=[1, 2, 3], max_tokens=32):
            ...
        result = await c.generate(prompt="hello", max_tokens=16)

`generate` and `resumable_stream` survive a dispatcher that dies mid-stream: they call again, on
the next of the given targets (or the same Service, whose next connection reaches a live
replica), with `resume` set to everything received so far, so the generation continues with no
token lost or repeated. Dispatchers share no state; the client carries what is needed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc

from llmfleet.serving import DECIDED_KEY
from llmfleet.v1 import dispatcher_pb2, dispatcher_pb2_grpc


@dataclass
class Generation:
    """A finished generation, as `generate()` returns it."""

    request_id: str = ""
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""
    usage: dispatcher_pb2.Usage | None = None
    messages: int = 0


# A dispatcher that went away (UNAVAILABLE), or, on a later attempt, one that still holds the
# abandoned call's request id for a moment (ALREADY_EXISTS): both are worth another try. Not an
# UNAVAILABLE the dispatcher decided itself (DECIDED_KEY): another replica would decide the same.
_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
_RETRY_LATER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ALREADY_EXISTS})


class DispatcherClient:
    def __init__(
        self,
        target: str | Sequence[str],
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        tls: bool = False,
        retries: int = 3,
        retry_backoff_s: float = 0.2,
    ) -> None:
        """`target`: one host:port, several separated by commas, or a list (dispatcher replicas).
        `retries`: calls after the first that generate/resumable_stream make when a dispatcher fails."""
        targets = [t.strip() for t in (target.split(",") if isinstance(target, str) else target) if t.strip()]
        if not targets:
            raise ValueError("give at least one dispatcher address")
        options = [("grpc.max_receive_message_length", 64 << 20)]
        creds = grpc.ssl_channel_credentials(root_certificates=root_certificates) if tls or root_certificates else None
        self.channels = [
            grpc.aio.secure_channel(t, creds, options=options) if creds else grpc.aio.insecure_channel(t, options=options)
            for t in targets
        ]
        self.stubs = [dispatcher_pb2_grpc.DispatcherStub(ch) for ch in self.channels]
        self.channel, self.stub = self.channels[0], self.stubs[0]
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self._next = 0  # the replica that served last

    async def __aenter__(self) -> DispatcherClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()

    @staticmethod
    def request(
        *,
        prompt: str | None = None,
        prompt_ids: Sequence[int] | None = None,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        stop_token_ids: Sequence[int] = (),
        include_stop_str_in_output: bool = False,
        min_tokens: int = 0,
        logit_bias: dict[int, float] | None = None,
        request_id: str = "",
        deadline_ms: int = 0,
        priority: int = 0,
        tenant: str = "",
        ignore_eos: bool = False,
    ) -> dispatcher_pb2.GenerateRequest:
        sampling = dispatcher_pb2.SamplingParams(
            temperature=temperature, top_p=top_p, top_k=top_k, stop=list(stop), min_tokens=min_tokens,
            logit_bias=logit_bias or {}, stop_token_ids=list(stop_token_ids),
            include_stop_str_in_output=include_stop_str_in_output,
        )
        if seed is not None:
            sampling.seed = seed
        req = dispatcher_pb2.GenerateRequest(
            max_tokens=max_tokens,
            sampling=sampling,
            request_id=request_id,
            deadline_ms=deadline_ms,
            priority=priority,
            tenant=tenant,
            ignore_eos=ignore_eos,
        )
        if prompt_ids is not None:
            req.token_ids.ids.extend(int(t) for t in prompt_ids)
        elif prompt is not None:
            req.text = prompt
        return req

    def stream(self, *, timeout: float | None = None, **kwargs: object) -> AsyncIterator[dispatcher_pb2.GenerateResponse]:
        """The raw response stream (a grpc.aio call: `.cancel()` it to cancel the request)."""
        return self.stub.Generate(self.request(**kwargs), metadata=self.metadata, timeout=timeout)  # type: ignore[arg-type]

    async def resumable_stream(
        self, *, timeout: float | None = None, **kwargs: object
    ) -> AsyncIterator[dispatcher_pb2.GenerateResponse]:
        """Like `stream`, but a dispatcher failing mid-stream is invisible: the request goes again to
        the next replica with `resume` set, and the stream carries on with the next new token."""
        request = self.request(**kwargs)  # type: ignore[arg-type]
        if not request.request_id:  # one id across attempts, so logs and Cancel follow it
            request.request_id = uuid.uuid4().hex
        deadline = time.monotonic() + timeout if timeout is not None else None
        resume = dispatcher_pb2.Resume()
        attempt = 0
        while True:
            stub = self.stubs[self._next % len(self.stubs)]
            if attempt:
                request.resume.CopyFrom(resume)
            left = None if deadline is None else max(deadline - time.monotonic(), 1e-3)
            try:
                async for msg in stub.Generate(request, metadata=self.metadata, timeout=left):
                    resume.token_ids.extend(msg.token_ids)
                    resume.text += msg.text
                    if msg.HasField("resume_state"):
                        resume.state.CopyFrom(msg.resume_state)
                    yield msg
                return
            except grpc.aio.AioRpcError as exc:
                codes = _RETRY_LATER_CODES if attempt else _RETRY_CODES
                decided = dict(exc.trailing_metadata() or ()).get(DECIDED_KEY) == "1"
                if exc.code() not in codes or decided or attempt >= self.retries:
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            attempt += 1
            self._next += 1  # the next replica (or, for one Service address, a new connection)
            await asyncio.sleep(self.retry_backoff_s * 2 ** (attempt - 1))

    async def generate(self, *, timeout: float | None = None, **kwargs: object) -> Generation:
        """Run one request to the end, resuming on another replica if a dispatcher fails; raises
        grpc.aio.AioRpcError when it cannot finish."""
        out = Generation()
        texts: list[str] = []
        async for msg in self.resumable_stream(timeout=timeout, **kwargs):
            out.messages += 1
            out.request_id = msg.request_id
            out.token_ids.extend(msg.token_ids)
            texts.append(msg.text)
            if msg.finish_reason:
                out.finish_reason = msg.finish_reason
                out.usage = msg.usage
        out.text = "".join(texts)
        return out

    async def cancel(self, request_id: str) -> bool:
        resp = await self.stub.Cancel(dispatcher_pb2.CancelRequest(request_id=request_id), metadata=self.metadata)
        return bool(resp.found)

    async def stats(self) -> dispatcher_pb2.StatsResponse:
        return await self.stub.Stats(dispatcher_pb2.StatsRequest(), metadata=self.metadata)
