"""`DispatcherClient`: call a dispatcher's Generate/Cancel/Stats from Python (grpc.aio).

    async with DispatcherClient("127.0.0.1:50051") as c:
        async for chunk in c.stream(prompt_ids=[1, 2, 3], max_tokens=32):
            ...
        result = await c.generate(prompt="hello", max_tokens=16)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc

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


class DispatcherClient:
    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        tls: bool = False,
    ) -> None:
        options = [("grpc.max_receive_message_length", 64 << 20)]
        if tls or root_certificates:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.aio.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        self.stub = dispatcher_pb2_grpc.DispatcherStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    async def __aenter__(self) -> DispatcherClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

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

    async def generate(self, *, timeout: float | None = None, **kwargs: object) -> Generation:
        """Run one request to the end; raises grpc.aio.AioRpcError on failure."""
        out = Generation()
        texts: list[str] = []
        async for msg in self.stream(timeout=timeout, **kwargs):
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
