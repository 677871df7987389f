"""The dispatcher's gRPC front: a thin adapter from `llmfleet.v1.Dispatcher` to `Dispatcher`,
plus `serve_dispatcher(...)`, which starts everything (discovery, policy loop, gRPC server with
health and reflection, optional TLS and bearer token, Prometheus) and returns a handle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from llmfleet.core.clock import Clock, RealClock
from llmfleet.core.config import SchedulingConfig
from llmfleet.core.prediction import LengthPredictor
from llmfleet.core.sampling import SamplingParams
from llmfleet.dispatcher.core import Dispatcher, DispatcherSettings
from llmfleet.dispatcher.discovery import Discovery, StaticDiscovery
from llmfleet.dispatcher.model import (
    FailEvent,
    FinishEvent,
    GenerateSpec,
    InvalidRequest,
    NoEngine,
    Overloaded,
    Resume,
    ResumeState,
    TokenEvent,
)
from llmfleet.dispatcher.predictor import load_predictor
from llmfleet.serving import (
    DECIDED_KEY,
    SERVER_OPTIONS,
    BearerTokenInterceptor,
    MetricsServer,
    TlsFiles,
    Token,
    add_health_and_reflection,
    bind,
    metrics_addr,
    serve_health_only,
    set_health,
)
from llmfleet.v1 import dispatcher_pb2, dispatcher_pb2_grpc

if TYPE_CHECKING:  # imported when the front is on: FastAPI and uvicorn load only then
    from llmfleet.dispatcher.openai_api import OpenAIServer

log = logging.getLogger(__name__)
SERVICE = "llmfleet.v1.Dispatcher"


def spec_from_proto(req: dispatcher_pb2.GenerateRequest, grpc_remaining_s: float | None) -> GenerateSpec:
    which = req.WhichOneof("prompt")
    s = req.sampling
    if req.max_tokens < 0 or req.deadline_ms < 0:
        raise InvalidRequest("max_tokens and deadline_ms must not be negative")
    deadline = req.deadline_ms / 1000.0 if req.deadline_ms else None
    if grpc_remaining_s is not None:
        deadline = min(deadline, grpc_remaining_s) if deadline is not None else grpc_remaining_s
    if deadline is not None:
        deadline = max(deadline, 1e-3)
    if s.top_k < 0:
        raise InvalidRequest(f"top_k must be >= 0 (0 means off), got {s.top_k}")
    if s.min_tokens < 0:
        raise InvalidRequest(f"min_tokens must be >= 0, got {s.min_tokens}")
    if s.min_tokens > req.max_tokens:
        raise InvalidRequest(f"min_tokens ({s.min_tokens}) must not exceed max_tokens ({req.max_tokens})")
    extra: dict[str, object] = {}
    if s.min_tokens:
        extra["min_tokens"] = s.min_tokens
    if s.logit_bias:
        bad = [b for b in s.logit_bias.values() if not -100.0 <= b <= 100.0]
        if bad or any(k < 0 for k in s.logit_bias):
            raise InvalidRequest("logit_bias needs non-negative token ids and biases in [-100, 100]")
        extra["logit_bias"] = {int(k): float(v) for k, v in s.logit_bias.items()}
    resume = None
    if req.HasField("resume"):
        r = req.resume
        state = ResumeState(r.state.pending_text_tokens, r.state.held_text, r.state.finish_reason)
        resume = Resume(tuple(r.token_ids), r.text, state)
    return GenerateSpec(
        resume=resume,
        max_tokens=req.max_tokens,
        prompt_text=req.text if which == "text" else None,
        prompt_ids=tuple(req.token_ids.ids) if which == "token_ids" else None,
        sampling=SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p if s.top_p != 0 else 1.0,
            top_k=s.top_k or None,
            seed=s.seed if s.HasField("seed") else None,
            stop=tuple(s.stop),
            stop_token_ids=tuple(s.stop_token_ids),
            include_stop_str_in_output=s.include_stop_str_in_output,
            extra=extra,
        ),
        request_id=req.request_id or None,
        deadline_s=deadline,
        priority=req.priority,
        tenant=req.tenant,
        ignore_eos=req.ignore_eos,
    )


_CODES = {
    "CANCELLED": grpc.StatusCode.CANCELLED,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
}


class DispatcherService(dispatcher_pb2_grpc.DispatcherServicer):
    def __init__(self, dispatcher: Dispatcher, config: SchedulingConfig) -> None:
        self.d = dispatcher
        self.config = config

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: dispatcher_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dispatcher_pb2.GenerateResponse]:
        try:
            # Sized before anything is copied out of the message (token ids become Python ints).
            self.d.check_prompt_size(
                len(request.text) + len(request.resume.text), len(request.token_ids.ids) + len(request.resume.token_ids)
            )
            spec = spec_from_proto(request, context.time_remaining())
            req = await self.d.submit(spec)
        except InvalidRequest as exc:
            code = grpc.StatusCode.ALREADY_EXISTS if exc.duplicate else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, str(exc))
        except Overloaded as exc:
            context.set_trailing_metadata((("retry-after-ms", str(int(exc.retry_after_s * 1000))),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except NoEngine as exc:
            context.set_trailing_metadata(((DECIDED_KEY, "1"),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        rid = req.request_id
        try:
            while True:
                event = await req.events.get()
                ids: list[int] = []
                text: list[str] = []
                state: ResumeState | None = None
                # Coalesce whatever else is already waiting into one message.
                while isinstance(event, TokenEvent):
                    ids.extend(event.token_ids)
                    text.append(event.text)
                    state = event.resume_state or state
                    if req.events.empty():
                        break
                    event = req.events.get_nowait()
                msg = None
                if ids or any(text):  # text alone: what was held back for stop strings, at the end
                    msg = dispatcher_pb2.GenerateResponse(request_id=rid, token_ids=ids, text="".join(text))
                    if state is not None:
                        msg.resume_state.pending_text_tokens = state.pending_text_tokens
                        msg.resume_state.held_text = state.held_text
                        msg.resume_state.finish_reason = state.finish_reason
                if isinstance(event, FinishEvent):
                    # The end rides on the last tokens' message when it is already here: one
                    # message less per request, which is most of a short request's cost.
                    msg = msg or dispatcher_pb2.GenerateResponse(request_id=rid)
                    u = event.usage
                    msg.finish_reason = event.finish_reason
                    msg.usage.CopyFrom(
                        dispatcher_pb2.Usage(
                            prompt_tokens=u.prompt_tokens,
                            completion_tokens=u.completion_tokens,
                            slices=u.slices,
                            migrations=u.migrations,
                            failovers=u.failovers,
                            queue_s=u.queue_s,
                            ttft_s=u.ttft_s,
                            e2e_s=u.e2e_s,
                            resumed_tokens=u.resumed_tokens,
                        )
                    )
                    yield msg
                    return
                if msg is not None:
                    yield msg
                if isinstance(event, FailEvent):
                    context.set_trailing_metadata(((DECIDED_KEY, "1"),))
                    await context.abort(_CODES.get(event.code, grpc.StatusCode.INTERNAL), event.message)
        finally:
            if not req.done:  # the client went away or its gRPC deadline passed
                self.d.cancel(rid, "the client cancelled the call")

    async def Cancel(self, request: dispatcher_pb2.CancelRequest, context: grpc.aio.ServicerContext) -> dispatcher_pb2.CancelResponse:  # noqa: N802
        if not request.request_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request_id is required")
        return dispatcher_pb2.CancelResponse(found=self.d.cancel(request.request_id, "cancelled by a Cancel call"))

    async def Stats(self, request: dispatcher_pb2.StatsRequest, context: grpc.aio.ServicerContext) -> dispatcher_pb2.StatsResponse:  # noqa: N802
        d = self.d
        now = d.clock.now()
        return dispatcher_pb2.StatsResponse(
            policy=self.config.policy,
            slice_tokens=self.config.slice_tokens or 0,
            queue_length=len(d.queue),
            max_queue=d.settings.max_queue,
            running=len(d.running),
            completed=d.completed,
            failed=d.failed,
            rejected=d.rejected,
            migrations=d.migrations,
            failovers=d.failovers,
            predictor=getattr(d.predictor, "name", type(d.predictor).__name__),
            pods=[
                dispatcher_pb2.PodStats(
                    pod_id=p.pod_id,
                    address=p.address,
                    group=p.group,
                    healthy=p.healthy(now),
                    draining=p.draining,
                    inflight=len(p.inflight),
                    engine_running=p.engine_running,
                    engine_waiting=p.engine_waiting,
                    kv_cache_usage=p.kv_cache_usage,
                    max_num_seqs=p.max_num_seqs,
                )
                for p in d.pods.values()
            ],
        )


@dataclass
class DispatcherHandle:
    """A running dispatcher: `port`, `metrics_port`, `dispatcher` (the mechanism); `stop()`."""

    server: grpc.aio.Server
    dispatcher: Dispatcher
    port: int
    metrics_port: int | None
    _discovery_task: asyncio.Task[None] | None = None
    _health_task: asyncio.Task[None] | None = None
    _metrics_server: MetricsServer | None = None
    _openai: OpenAIServer | None = None
    _health: Any = None  # the gRPC health servicer
    _health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    _stopped: bool = field(default=False)
    health_serving: list[bool] = field(default_factory=lambda: [False])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def openai_port(self) -> int | None:
        return self._openai.port if self._openai else None

    @property
    def openai_base_url(self) -> str | None:
        """The base URL OpenAI clients take (`OpenAI(base_url=...)`), when the front is on."""
        return f"{self._openai.scheme}://127.0.0.1:{self._openai.port}/v1" if self._openai else None

    async def wait_ready(self, pods: int = 1, timeout_s: float = 60.0) -> None:
        """Wait until at least `pods` pods are healthy (connected, engine up, not draining)."""
        from llmfleet.core.clock import wait_for_condition

        await wait_for_condition(
            lambda: len(self.dispatcher.healthy_pods()) >= pods and (pods == 0 or self.health_serving[0]),
            timeout=timeout_s,
            what=f"{pods} healthy pods",
        )

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        for task in (self._discovery_task, self._health_task):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._health is not None:
            # Not ready for the whole grace period, so a Service stops sending new work here at once.
            await set_health(self._health, [SERVICE], False)
            self.health_serving[0] = False
        if self._openai:
            await self._openai.stop()
        await self.dispatcher.stop(grace_s)
        await self.server.stop(1.0)
        if self._health_server is not None:
            await self._health_server.stop(None)
        if self._metrics_server:
            await self._metrics_server.stop()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def serve_dispatcher(
    *,
    pods: dict[str, str] | None = None,
    discovery: Discovery | None = None,
    config: SchedulingConfig | None = None,
    port: int = 0,
    host: str = "127.0.0.1",
    metrics_port: int | None = None,
    clock: Clock | None = None,
    predictor: LengthPredictor | None = None,
    settings: DispatcherSettings | None = None,
    tls: TlsFiles | None = None,
    auth_token: Token | None = None,
    sidecar_credentials: grpc.ChannelCredentials | None = None,
    sidecar_tls_server_name: str | None = None,
    online_ranker_every_s: float = 0.0,
    openai_port: int | None = None,
    health_port: int | None = None,
    sidecar_token: Token | None = None,
) -> DispatcherHandle:
    """Start a dispatcher. Give `pods` ({id: "host:port"} of sidecars) or a `discovery` source.

    The policy, slice length, starvation bound, queue bound and ranker artifact come from
    `config` (a `SchedulingConfig`; defaults if None); `settings` overrides the mechanism's
    knobs; `online_ranker_every_s > 0` turns on online ranker retraining. `openai_port` (0 picks
    a free one) adds the OpenAI-compatible HTTP front on the same dispatcher and auth token.
    `health_port` adds a plaintext gRPC health-only port, for probes when the API uses TLS.
    `sidecar_token` is sent as a bearer token on every call to the sidecars. `sidecar_credentials`
    (grpc.ssl_channel_credentials) turn on TLS to them; pods are dialled by IP, so their certificate
    is checked for `sidecar_tls_server_name` instead of the address.
    """
    from llmfleet.policies.registry import make_policy, policy_spec

    config = config or SchedulingConfig()
    spec = policy_spec(config.policy)
    if spec.needs_true_lengths:
        raise ValueError(
            f"policy {config.policy!r} needs true output lengths, which only a simulator knows; "
            "it is a reference bound, not a policy a live dispatcher can run"
        )
    policy = make_policy(config)
    if settings is None:
        settings = DispatcherSettings(max_queue=config.max_queue)
    clock = clock or RealClock()
    dispatcher = Dispatcher(
        policy,
        clock=clock,
        settings=settings,
        predictor=predictor or load_predictor(config.ranker, clock=clock, online_every_s=online_ranker_every_s),
        channel_credentials=sidecar_credentials,
        sidecar_tls_server_name=sidecar_tls_server_name,
        sidecar_token=sidecar_token,
    )
    interceptors = [BearerTokenInterceptor(auth_token, f"/{SERVICE}/")] if auth_token else []
    options = [*SERVER_OPTIONS, ("grpc.max_receive_message_length", settings.max_request_bytes)]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    dispatcher_pb2_grpc.add_DispatcherServicer_to_server(DispatcherService(dispatcher, config), server)
    health = add_health_and_reflection(server, [SERVICE])
    await set_health(health, [SERVICE], False)
    bound = bind(server, host, port, tls)
    health_server = None
    if health_port is not None:  # for probes when the API uses TLS
        health_server, health_port = await serve_health_only(health, host, health_port)
    await dispatcher.start()
    await server.start()
    source = discovery or StaticDiscovery(pods or {})
    discovery_task = asyncio.create_task(source.run(dispatcher.set_pods), name="dispatcher-discovery")

    serving_flag = [False]

    async def follow_health() -> None:
        # SERVING once any pod can take work; Kubernetes' readiness probe follows this.
        serving: bool | None = None
        while True:
            now_serving = bool(dispatcher.healthy_pods())
            if now_serving != serving:
                serving = now_serving
                await set_health(health, [SERVICE], serving)
                serving_flag[0] = serving
            await asyncio.sleep(0.1)

    health_task = asyncio.create_task(follow_health(), name="dispatcher-health")
    metrics_server = (
        MetricsServer(dispatcher.metrics.registry, metrics_port, metrics_addr(host)) if metrics_port is not None else None
    )
    openai = None
    if openai_port is not None:
        from llmfleet.dispatcher.openai_api import OpenAIServer, create_app

        app = create_app(dispatcher, auth_token, max_body_bytes=settings.max_request_bytes)
        openai = await OpenAIServer(app, host, openai_port, tls).start()
    log.info("dispatcher on port %d, policy %s, slice %s tokens", bound, config.policy, config.slice_tokens or "no")
    return DispatcherHandle(
        server=server,
        dispatcher=dispatcher,
        port=bound,
        metrics_port=metrics_server.port if metrics_server else None,
        _discovery_task=discovery_task,
        _health_task=health_task,
        _metrics_server=metrics_server,
        _openai=openai,
        _health=health,
        _health_server=health_server,
        health_port=health_port,
        health_serving=serving_flag,
    )
