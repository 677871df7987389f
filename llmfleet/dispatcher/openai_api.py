"""The OpenAI-compatible HTTP front of the dispatcher: `/v1/models`, `/v1/completions` and
`/v1/chat/completions`, streamed as server-sent events or not.

It is an adapter, like the gRPC servicer: it converts OpenAI's JSON to a `GenerateSpec`, submits
it to the same `Dispatcher` (one queue, one policy, one set of metrics, auth and failover for both
doors), and turns the request's events back into OpenAI's shapes. Errors use OpenAI's
`{"error": {"message", "type", "param", "code"}}` with the status code clients expect: 400 bad
input, 401 no or wrong bearer token, 404 unknown model, 429 queue full (with Retry-After), 503 no
engine, 504 deadline. Parameters llmfleet does not support (`n` > 1, logprobs, tools, ...) are
refused with a 400 that names them, never silently ignored. A client that disconnects cancels
its requests, which aborts the engine work behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmfleet.core.sampling import SamplingParams
from llmfleet.dispatcher.core import Dispatcher
from llmfleet.dispatcher.model import (
    FailEvent,
    FinishEvent,
    GenerateSpec,
    InvalidRequest,
    LiveRequest,
    NoEngine,
    Overloaded,
    TokenEvent,
)
from llmfleet.dispatcher.openai_models import ChatRequest, CompletionRequest, Params
from llmfleet.serving import TlsFiles, Token, token_value

DEADLINE_HEADER = "x-llmfleet-deadline-ms"
CHAT_FALLBACK_MAX_TOKENS = 256  # chat without max_tokens, while no pod has reported its context  # llmfleet's own: a deadline for the request, as gRPC has
_FAIL_STATUS = {"INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504, "UNAVAILABLE": 503, "CANCELLED": 499}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param, self.headers = status, message, type_, code, param, headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


@dataclass
class Outcome:
    """One finished choice."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def _spec(p: Params, max_tokens: int, deadline_s: float | None, **prompt: Any) -> GenerateSpec:
    stop = (p.stop,) if isinstance(p.stop, str) else tuple(p.stop or ())
    extra: dict[str, Any] = {}
    if p.min_tokens:
        extra["min_tokens"] = p.min_tokens
    if p.logit_bias:
        try:
            extra["logit_bias"] = {int(k): float(v) for k, v in p.logit_bias.items()}
        except ValueError as exc:
            raise ApiError(400, "logit_bias keys must be token ids", param="logit_bias") from exc
    sampling = SamplingParams(
        temperature=1.0 if p.temperature is None else p.temperature,  # OpenAI's default, unlike gRPC's greedy 0
        top_p=1.0 if p.top_p is None else p.top_p,
        top_k=p.top_k if p.top_k and p.top_k > 0 else None,
        seed=p.seed,
        stop=stop,
        stop_token_ids=tuple(p.stop_token_ids or ()),
        include_stop_str_in_output=p.include_stop_str_in_output,
        extra=extra,
    )
    return GenerateSpec(max_tokens=max_tokens, sampling=sampling, deadline_s=deadline_s, priority=p.priority,
                        tenant=p.user or "", ignore_eos=p.ignore_eos, **prompt)  # fmt: skip


class OpenAIFront:
    """The routes, bound to one dispatcher."""

    def __init__(self, dispatcher: Dispatcher, auth_token: Token | None = None) -> None:
        self.d = dispatcher
        self.auth_token = auth_token

    # ----- plumbing -------------------------------------------------------------------------------
    def authorized(self, header: str) -> bool:
        if self.auth_token is None:
            return True
        expected = token_value(self.auth_token).encode()
        return header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip().encode(), expected)

    def served_model(self) -> str:
        names = sorted({p.model for p in self.d.pods.values() if p.model})
        return names[0] if names else "llmfleet"

    def check_model(self, name: str) -> None:
        if name != self.served_model():
            raise ApiError(404, f"the model '{name}' does not exist; this fleet serves '{self.served_model()}'",
                           code="model_not_found", param="model")  # fmt: skip


    async def submit(self, spec: GenerateSpec) -> LiveRequest:
        try:
            return await self.d.submit(spec)
        except Overloaded as exc:
            raise ApiError(429, str(exc), "rate_limit_exceeded", "queue_full",
                           headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}) from exc  # fmt: skip
        except NoEngine as exc:
            raise ApiError(503, str(exc), "service_unavailable", "no_engine") from exc
        except InvalidRequest as exc:
            raise ApiError(400, str(exc)) from exc

    @staticmethod
    async def events(req: LiveRequest) -> AsyncIterator[tuple[str, FinishEvent | None]]:
        """(text, None) as tokens arrive, then ("", finish); a failure raises ApiError."""
        while True:
            event = await req.events.get()
            if isinstance(event, TokenEvent):
                yield event.text, None
            elif isinstance(event, FinishEvent):
                yield "", event
                return
            elif isinstance(event, FailEvent):
                status = _FAIL_STATUS.get(event.code, 500)
                raise ApiError(status, event.message, "timeout" if status == 504 else "server_error" if status >= 500
                               else "invalid_request_error", event.code.lower())  # fmt: skip

    async def collect(self, req: LiveRequest) -> Outcome:
        text = []
        async for piece, finish in self.events(req):
            text.append(piece)
            if finish is not None:
                u = finish.usage
                return Outcome("".join(text), finish.finish_reason, u.prompt_tokens, u.completion_tokens)
        raise ApiError(500, "the request ended without a result", "server_error")

    def cancel(self, reqs: list[LiveRequest]) -> None:
        for r in reqs:
            if not r.done:
                self.d.cancel(r.request_id, "the HTTP client went away")

    async def run(self, request: Request, body: Params, prompts: list[dict[str, Any]],
                  chat: bool) -> Response:  # fmt: skip
        self.check_model(body.model)
        refused = body.unsupported()
        if refused:
            raise ApiError(400, f"llmfleet does not support: {', '.join(refused)}", code="unsupported_parameter")
        deadline = request.headers.get(DEADLINE_HEADER)
        deadline_s = int(deadline) / 1000.0 if deadline and deadline.isdigit() else None
        wanted = (getattr(body, "max_completion_tokens", None) or body.max_tokens) if chat else body.max_tokens
        reqs: list[LiveRequest] = []
        try:
            for prompt in prompts:
                # Without max_tokens OpenAI gives completions 16 tokens and chat the rest of the
                # context, which only the dispatcher knows once the prompt is tokenized.
                spec = _spec(body, wanted or (CHAT_FALLBACK_MAX_TOKENS if chat else 16), deadline_s, **prompt)
                reqs.append(await self.submit(replace(spec, to_context=chat and not wanted)))
        except BaseException:
            self.cancel(reqs)
            raise
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if body.stream:
            usage = body.stream_options.include_usage if body.stream_options else False
            return StreamingResponse(self._sse(reqs, rid, created, body.model, chat, usage), media_type="text/event-stream")
        outcomes = await self._with_disconnect(request, reqs, asyncio.gather(*(self.collect(r) for r in reqs)))
        return JSONResponse(_whole(rid, created, body.model, chat, outcomes))

    async def _with_disconnect(self, request: Request, reqs: list[LiveRequest], work: Awaitable[Any]) -> Any:
        """Run `work`; if the client disconnects first, cancel its requests (and the engine work)."""

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                self.cancel(reqs)
                task.cancel()
                raise ApiError(499, "the client closed the request", code="client_closed")
            return task.result()
        finally:
            watch.cancel()
            with contextlib.suppress(BaseException):
                await watch
            if not task.done():
                task.cancel()

    async def _sse(self, reqs: list[LiveRequest], rid: str, created: int, model: str, chat: bool,
                   include_usage: bool) -> AsyncIterator[str]:  # fmt: skip
        """Server-sent events in OpenAI's chunk format; the connection closing (an exception here)
        cancels every request still running."""
        queue: asyncio.Queue[tuple[int, str, FinishEvent | None] | ApiError] = asyncio.Queue()

        async def pump(i: int, req: LiveRequest) -> None:
            try:
                async for piece, finish in self.events(req):
                    await queue.put((i, piece, finish))
            except ApiError as exc:
                await queue.put(exc)

        tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(reqs)]
        obj = "chat.completion.chunk" if chat else "text_completion"
        prompt_tokens = completion_tokens = 0
        try:
            if chat:
                for i in range(len(reqs)):
                    yield _event(rid, obj, created, model, [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                              "logprobs": None, "finish_reason": None}])  # fmt: skip
            left = len(reqs)
            while left:
                item = await queue.get()
                if isinstance(item, ApiError):
                    yield f"data: {json.dumps(item.body())}\n\n"
                    break
                i, piece, finish = item
                if finish is not None:
                    left -= 1
                    prompt_tokens += finish.usage.prompt_tokens
                    completion_tokens += finish.usage.completion_tokens
                if piece or finish is not None:
                    yield _event(rid, obj, created, model, [_choice(i, piece, finish.finish_reason if finish else None, chat)])
            else:
                if include_usage:
                    yield _event(rid, obj, created, model, [], _usage(prompt_tokens, completion_tokens))
                yield "data: [DONE]\n\n"
        finally:
            for t in tasks:
                t.cancel()
            self.cancel(reqs)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _choice(i: int, text: str, finish: str | None, chat: bool) -> dict[str, Any]:
    if chat:
        return {"index": i, "delta": {"content": text} if text else {}, "logprobs": None, "finish_reason": finish}
    return {"index": i, "text": text, "logprobs": None, "finish_reason": finish}


def _event(rid: str, obj: str, created: int, model: str, choices: list[Any], usage: dict[str, int] | None = None) -> str:
    chunk: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices}
    if usage is not None:
        chunk["usage"] = usage
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


def _whole(rid: str, created: int, model: str, chat: bool, outcomes: list[Outcome]) -> dict[str, Any]:
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": o.text}, "logprobs": None,
                    "finish_reason": o.finish_reason} for i, o in enumerate(outcomes)]  # fmt: skip
    else:
        choices = [{"index": i, "text": o.text, "logprobs": None, "finish_reason": o.finish_reason}
                   for i, o in enumerate(outcomes)]  # fmt: skip
    usage = _usage(sum(o.prompt_tokens for o in outcomes), sum(o.completion_tokens for o in outcomes))
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage}  # fmt: skip


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        return [{"prompt_text": prompt}]
    if not prompt:
        raise ApiError(400, "prompt is empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [{"prompt_ids": tuple(prompt)}]
    return [{"prompt_text": p} if isinstance(p, str) else {"prompt_ids": tuple(p)} for p in prompt if not isinstance(p, int)]


class RequestGate:
    """ASGI middleware, before any body is read or parsed: a body over the size limit gets 413, and
    every /v1/ call needs the bearer token when auth is on (401). A pure ASGI layer, so streaming
    and disconnects pass through untouched."""

    def __init__(self, app: Any, front: OpenAIFront, max_body_bytes: int) -> None:
        self.app, self.front, self.max_body_bytes = app, front, max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = dict(scope.get("headers") or ())
            length = headers.get(b"content-length", b"0")
            if length.isdigit() and int(length) > self.max_body_bytes:
                too_big = ApiError(413, f"request body is {int(length)} bytes; the limit is {self.max_body_bytes}",
                                   code="request_too_large")  # fmt: skip
                await too_big.response()(scope, receive, send)
                return
            header = headers.get(b"authorization", b"").decode("latin-1")
            if not self.front.authorized(header):
                denied = ApiError(401, "missing or wrong API key (send 'Authorization: Bearer <token>')",
                                  code="invalid_api_key")  # fmt: skip
                await denied.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(dispatcher: Dispatcher, auth_token: Token | None = None, max_body_bytes: int = 2 << 20) -> FastAPI:
    """The ASGI app; serve it with uvicorn (`serve_dispatcher(openai_port=...)` does)."""
    front = OpenAIFront(dispatcher, auth_token)
    app = FastAPI(title="llmfleet", description="OpenAI-compatible front of the llmfleet dispatcher", docs_url=None,
                  redoc_url=None, openapi_url=None)  # fmt: skip

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request body"))
        if first.get("type") == "extra_forbidden":
            message = f"unknown or unsupported parameter '{where}'"
        return ApiError(400, message, param=where or None).response()

    app.add_middleware(RequestGate, front=front, max_body_bytes=max_body_bytes)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": front.served_model(), "object": "model", "created": 0, "owned_by": "llmfleet"}]})  # fmt: skip

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        return await front.run(request, body, _prompts(body.prompt), chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request, body: ChatRequest) -> Response:
        messages = tuple((m.role if m.role != "developer" else "system", m.text()) for m in body.messages)
        return await front.run(request, body, [{"prompt_messages": messages}], chat=True)

    return app


class OpenAIServer:
    """uvicorn serving the app inside the dispatcher's own event loop; `port` is the bound one."""

    def __init__(self, app: FastAPI, host: str, port: int, tls: TlsFiles | None = None) -> None:
        import uvicorn

        # The same certificate as the gRPC API: one TLS setting covers both doors.
        config = uvicorn.Config(app, host=host.strip("[]") or "0.0.0.0", port=port, log_level="warning",
                                lifespan="off", access_log=False, timeout_graceful_shutdown=5,
                                ssl_certfile=str(tls.cert) if tls else None,
                                ssl_keyfile=str(tls.key) if tls else None)  # fmt: skip
        self.scheme = "https" if tls else "http"
        self.server = uvicorn.Server(config)
        # The dispatcher's CLI owns SIGTERM/SIGINT and stops this server itself.
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self.task: asyncio.Task[None] | None = None
        self.port = port

    async def start(self) -> OpenAIServer:
        from llmfleet.core.clock import wait_for_condition

        self.task = asyncio.create_task(self.server.serve(), name="openai-front")
        await wait_for_condition(lambda: self.server.started or self.task is None or self.task.done(), 30,
                                 what="the OpenAI front to listen")  # fmt: skip
        if not self.server.started:
            raise OSError(f"the OpenAI front could not listen on port {self.port}")
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
