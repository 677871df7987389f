"""A deterministic in-process stand-in for a sidecar + engine, for fast dispatcher tests.

Its "model" continues any context deterministically (`next_token`), so a request cut into slices
must produce exactly `reference(prompt, n)`; failures can be injected per pod.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from llmfleet.serving import add_health_and_reflection, set_health
from llmfleet.sidecar.multiplex import multiplex
from llmfleet.v1 import sidecar_pb2, sidecar_pb2_grpc

EOS = 2


def next_token(context: list[int]) -> int:
    return (sum(context[-3:]) * 31 + len(context) * 7) % 997 + 3  # never EOS


def reference(prompt: list[int], n: int) -> list[int]:
    ctx = list(prompt)
    out = []
    for _ in range(n):
        t = next_token(ctx)
        ctx.append(t)
        out.append(t)
    return out


@dataclass
class Faults:
    break_after_tokens: int | None = None  # abort the call (UNAVAILABLE) after this many tokens, once per slice
    break_times: int = 0  # how many slices to break
    error_times: int = 0  # slices that end with a retryable engine error (after 1 token)
    malformed_times: int = 0  # slices that stream one token too many
    client_error: str | None = None  # every slice ends with this client error
    eos_at: int | None = None  # request output length at which EOS ("stop") happens
    draining: bool = False


@dataclass
class FakeSidecar(sidecar_pb2_grpc.SidecarServicer):
    token_delay_s: float = 0.001
    first_token_delay_s: float = 0.0  # extra wait before a slice's first token (its prefill)
    max_model_len: int = 512
    max_num_seqs: int = 4
    vocab_size: int = 0
    group: str = ""
    faults: Faults = field(default_factory=Faults)
    active: int = 0
    slices: int = 0
    cancelled: int = 0
    priorities: list[int] = field(default_factory=list)
    samplings: list[sidecar_pb2.Sampling] = field(default_factory=list)
    slice_calls: int = 0  # Slices calls opened
    command_messages: list[int] = field(default_factory=list)  # slices started by each command message

    async def RunSlice(self, request, context) -> AsyncIterator[sidecar_pb2.SliceEvent]:  # noqa: N802
        f = self.faults
        if f.draining:
            context.set_trailing_metadata((("llmfleet-draining", "1"),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "sidecar is draining; run the slice elsewhere")
        self.slices += 1
        self.active += 1
        try:
            for item in request.items:
                self.priorities.append(item.priority)
                self.samplings.append(item.sampling)
                ctx = [*item.prompt_token_ids, *item.generated_token_ids]
                done_before = len(item.generated_token_ids)
                if self.first_token_delay_s:
                    await asyncio.sleep(self.first_token_delay_s)
                for i in range(item.max_tokens):
                    if f.client_error:
                        yield _done(item.request_id, "error", f.client_error, client_error=True)
                        break
                    if f.break_times and f.break_after_tokens is not None and i == f.break_after_tokens:
                        f.break_times -= 1
                        await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (injected)")
                    if f.error_times and i == 1:
                        f.error_times -= 1
                        yield _done(item.request_id, "error", "HTTP 500: boom (injected)", retryable=True)
                        break
                    await asyncio.sleep(self.token_delay_s)
                    t = next_token(ctx)
                    ctx.append(t)
                    yield sidecar_pb2.SliceEvent(
                        request_id=item.request_id, tokens=sidecar_pb2.SliceTokens(token_ids=[t], text=f"<{t}>")
                    )
                    if f.eos_at is not None and done_before + i + 1 >= f.eos_at:
                        yield _done(item.request_id, "stop")
                        break
                else:
                    if f.malformed_times:
                        f.malformed_times -= 1
                        t = next_token(ctx)
                        yield sidecar_pb2.SliceEvent(
                            request_id=item.request_id, tokens=sidecar_pb2.SliceTokens(token_ids=[t], text="")
                        )
                    yield _done(item.request_id, "length")
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1

    async def Slices(self, request_iterator, context):  # noqa: N802
        """The dispatcher's path: each started item runs RunSlice above, whose aborts become
        the item's failure, as the real sidecar reports them."""
        self.slice_calls += 1

        async def counted():
            async for message in request_iterator:
                self.command_messages.append(len(message.start))
                yield message

        async for updates in multiplex(self, counted()):
            yield updates

    def start_slice(self, item, emit) -> asyncio.Task[None]:
        async def run() -> None:
            try:
                async for event in self.RunSlice(sidecar_pb2.SliceRequest(items=[item]), _ItemContext()):
                    emit(event)
            except _Aborted as exc:
                emit(sidecar_pb2.SliceFailure(code=exc.code.name, message=exc.details, draining=exc.draining))

        return asyncio.create_task(run())

    async def Tokenize(self, request, context):  # noqa: N802
        return sidecar_pb2.TokenizeResponse(
            token_ids=[b + 3 for b in request.text.encode()], max_model_len=self.max_model_len
        )

    async def Info(self, request, context):  # noqa: N802
        return sidecar_pb2.InfoResponse(
            model="fake", max_model_len=self.max_model_len, group=self.group, max_num_seqs=self.max_num_seqs,
            kv_capacity_tokens=100_000, block_size=16, vocab_size=self.vocab_size,
        )  # fmt: skip

    async def StreamLoad(self, request, context):  # noqa: N802
        while True:
            yield sidecar_pb2.LoadReport(
                running=self.active, engine_healthy=True, draining=self.faults.draining,
                kv_capacity_tokens=100_000, max_num_seqs=self.max_num_seqs, group=self.group,
            )  # fmt: skip
            await asyncio.sleep(0.05)

    async def Drain(self, request, context):  # noqa: N802
        self.faults.draining = True
        return sidecar_pb2.DrainResponse()


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, draining: bool) -> None:
        self.code, self.details, self.draining = code, details, draining


class _ItemContext:
    """What RunSlice uses of a servicer context, for one item of a Slices call."""

    def __init__(self) -> None:
        self.draining = False

    def set_trailing_metadata(self, metadata) -> None:
        self.draining = ("llmfleet-draining", "1") in tuple(metadata)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details, self.draining)


def _done(rid: str, reason: str, error: str = "", retryable: bool = False, client_error: bool = False):
    return sidecar_pb2.SliceEvent(
        request_id=rid,
        done=sidecar_pb2.SliceDone(finish_reason=reason, error=error, retryable=retryable, client_error=client_error),
    )


@dataclass
class FakePod:
    servicer: FakeSidecar
    server: grpc.aio.Server
    port: int
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def stop(self) -> None:
        await self.server.stop(None)


async def start_fake_pod(host: str = "127.0.0.1", port: int = 0, **kwargs) -> FakePod:
    servicer = FakeSidecar(**kwargs)
    server = grpc.aio.server()
    sidecar_pb2_grpc.add_SidecarServicer_to_server(servicer, server)
    health = add_health_and_reflection(server, ["llmfleet.v1.Sidecar"])
    await set_health(health, ["llmfleet.v1.Sidecar"], True)
    port = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return FakePod(servicer, server, port, host)
