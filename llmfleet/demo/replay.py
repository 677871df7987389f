"""Open-loop replay of a workload through a dispatcher's gRPC API, recording what each client saw.

Requests are sent at their arrival times whether or not earlier ones have finished, as real
traffic does. A request rejected with RESOURCE_EXHAUSTED is retried after the server's hint, so
overload shows up as latency rather than as lost requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from llmfleet.demo.workload import WorkloadRequest

EOS_TOKEN_ID = 2  # the tiny model's </s>


@dataclass(frozen=True)
class Outcome:
    request_id: str
    arrival_s: float
    first_token_s: float | None
    finish_s: float | None
    tokens: int
    expected_tokens: int
    status: str  # "ok" or a gRPC status name
    error: str = ""
    retries: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def generate_request(req: WorkloadRequest, hidden_length: bool, max_tokens_cap: int, tell_length: bool = False):  # type: ignore[no-untyped-def]
    """The GenerateRequest for one workload request.

    With `hidden_length`, the answer's length is a property of the generation (vLLM's
    `min_tokens` plus an EOS bias, which the scheduler never reads) and `max_tokens` is only a
    generous cap, as in production. Otherwise `ignore_eos` + `max_tokens` fixes the length, and
    the scheduler sees the exact length in `max_tokens`.

    `tell_length` (the demo's `llmfleet-oracle` entry) keeps the hidden request's sampling, so the engine
    does the same work, and also fixes the length with `ignore_eos` + `max_tokens`, which the
    dispatcher reads as an exact estimate: the same request, with the scheduler told its length.
    """
    from llmfleet.v1 import dispatcher_pb2

    prompt = (
        {"text": req.prompt_text}
        if req.prompt_text is not None
        else {"token_ids": dispatcher_pb2.TokenIds(ids=list(req.prompt_token_ids))}
    )
    if hidden_length:
        sampling = dispatcher_pb2.SamplingParams(
            temperature=0.0, min_tokens=max(0, req.output_tokens - 1), logit_bias={EOS_TOKEN_ID: 100.0}
        )
        if tell_length:
            return dispatcher_pb2.GenerateRequest(
                **prompt, request_id=req.request_id, max_tokens=req.output_tokens, ignore_eos=True, sampling=sampling
            )
        return dispatcher_pb2.GenerateRequest(
            **prompt, request_id=req.request_id, max_tokens=max(max_tokens_cap, req.output_tokens), sampling=sampling
        )
    return dispatcher_pb2.GenerateRequest(
        **prompt, request_id=req.request_id, max_tokens=req.output_tokens, ignore_eos=True
    )


async def replay(
    address: str,
    workload: Sequence[WorkloadRequest],
    *,
    hidden_length: bool = True,
    tell_lengths: bool = False,
    max_tokens_cap: int = 512,
    on_done: Callable[[Outcome], None] | None = None,
    max_retries: int = 50,
    timeout_s: float = 600.0,
) -> list[Outcome]:
    """Send every request at its arrival time; return one `Outcome` per request, in workload order."""
    from llmfleet.v1 import dispatcher_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = dispatcher_pb2_grpc.DispatcherStub(channel)
        t0 = time.monotonic()

        async def one(req: WorkloadRequest) -> Outcome:
            delay = t0 + req.arrival_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # open-loop arrivals follow the wall clock by design
            arrival = time.monotonic() - t0
            first = None
            tokens = 0
            retries = 0
            while True:
                try:
                    call = stub.Generate(generate_request(req, hidden_length, max_tokens_cap, tell_lengths), timeout=timeout_s)
                    async for msg in call:
                        if msg.token_ids and first is None:
                            first = time.monotonic() - t0
                        tokens += len(msg.token_ids)
                    outcome = Outcome(req.request_id, arrival, first, time.monotonic() - t0, tokens, req.output_tokens, "ok", retries=retries)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and retries < max_retries and tokens == 0:
                        retries += 1
                        await asyncio.sleep(_retry_after_s(exc))
                        continue
                    outcome = Outcome(
                        req.request_id, arrival, first, None, tokens, req.output_tokens, exc.code().name, exc.details() or "", retries
                    )
                    break
            if on_done:
                on_done(outcome)
            return outcome

        return list(await asyncio.gather(*(one(r) for r in workload)))


def _retry_after_s(exc: grpc.aio.AioRpcError) -> float:
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after-ms":
            try:
                return max(0.01, float(value) / 1000.0)
            except ValueError:
                break
    return 0.25
