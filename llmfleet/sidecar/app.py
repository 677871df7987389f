"""Start a sidecar: `serve_sidecar(...)` returns a `SidecarHandle` with `.port`, `.drain()`, `.stop()`."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from llmfleet.engine.client import EngineLike
from llmfleet.serving import (
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
from llmfleet.sidecar.server import SERVICE, SidecarService
from llmfleet.v1 import sidecar_pb2_grpc


@dataclass
class SidecarHandle:
    """A running sidecar: `port`, `metrics_port`, `service`; `drain()` and `stop()`."""

    server: grpc.aio.Server
    service: SidecarService
    port: int
    metrics_port: int | None
    _metrics_server: MetricsServer | None = None
    _health_server: grpc.aio.Server | None = None
    health_port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def drain(self, timeout_s: float = 30.0) -> tuple[int, int]:
        return await self.service.drain(timeout_s)

    async def stop(self, grace_s: float = 0.0, drain_timeout_s: float | None = None) -> None:
        """Stop serving; with `drain_timeout_s`, drain first so no slice is cut short."""
        if drain_timeout_s is not None:
            await self.service.drain(drain_timeout_s)
        await self.server.stop(grace_s)
        if self._health_server is not None:
            await self._health_server.stop(None)
        await self.service.close()
        if self._metrics_server:
            await self._metrics_server.stop()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def serve_sidecar(
    engine: str | EngineLike,
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    metrics_port: int | None = None,
    group: str = "",
    max_num_seqs: int | None = None,
    load_interval_s: float = 0.25,
    tls: TlsFiles | None = None,
    auth_token: Token | None = None,
    health_port: int | None = None,
) -> SidecarHandle:
    """Start a sidecar for the vLLM server at `engine` (a URL, or an engine object such as
    `llmfleet.engine.simulated.SimulatedEngineClient`); `port=0` picks a free port. With
    `auth_token`, every Sidecar call (slices, drain, tokenize, load) needs it as a bearer token;
    health and reflection stay open for probes. `health_port` adds a plaintext health-only port
    (for Kubernetes' probes when the API uses `tls`). An engine object with metrics of its own
    (`registry`, as the simulated engine's vLLM histograms) has them served beside the sidecar's."""
    service = SidecarService(engine, group=group, max_num_seqs=max_num_seqs, load_interval_s=load_interval_s)
    engine_registry = getattr(engine, "registry", None)
    if engine_registry is not None:
        service.metrics.registry.register(engine_registry)
    interceptors = [BearerTokenInterceptor(auth_token, f"/{SERVICE}/")] if auth_token else []
    server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
    sidecar_pb2_grpc.add_SidecarServicer_to_server(service, server)
    service.health = add_health_and_reflection(server, [SERVICE])
    await set_health(service.health, [SERVICE], False)  # SERVING once the engine answers
    bound = bind(server, host, port, tls)
    await server.start()
    health_server = None
    if health_port is not None:
        health_server, health_port = await serve_health_only(service.health, host, health_port)
    metrics_server = (
        MetricsServer(service.metrics.registry, metrics_port, metrics_addr(host)) if metrics_port is not None else None
    )
    service.start()
    return SidecarHandle(
        server=server,
        service=service,
        port=bound,
        metrics_port=metrics_server.port if metrics_server else None,
        _metrics_server=metrics_server,
        _health_server=health_server,
        health_port=health_port,
    )
