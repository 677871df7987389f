"""gRPC server plumbing shared by the sidecar and the dispatcher: health, reflection, TLS,
bearer-token auth and a Prometheus endpoint on its own registry (several servers may run in one
process, e.g. in tests and in `llmfleet demo`)."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

# One stream per request, many per client connection, arriving in bursts. gRPC core otherwise
# cancels, with a bare CANCELLED, calls the event loop has not picked up yet: beyond 1,000 pending
# (random early drop up to 3,000) or after 30 s. Our own admission control is the bound that answers.
SERVER_OPTIONS = [
    ("grpc.max_concurrent_streams", 1 << 20),
    ("grpc.server.max_pending_requests", 1 << 17),
    ("grpc.server.max_pending_requests_hard_limit", 1 << 18),
    ("grpc.server_max_unrequested_time_in_server", 600),
    # The dispatcher pings its sidecar channels (keepalive) to find a hung peer: allow it.
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
]

# Trailing metadata on a slice a draining sidecar refuses: the dispatcher runs it elsewhere.
DRAINING_KEY = "llmfleet-draining"
# Trailing metadata on an error the dispatcher itself decided (it gave up on the request, or no
# engine is up): a client resuming on another replica would get the same, so it does not retry.
DECIDED_KEY = "llmfleet-decided"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# Health service names: "" and the API's own name report readiness (the sidecar: its engine is up
# and it is not draining; the dispatcher: at least one pod takes work). LIVENESS is SERVING for as
# long as the process serves, for a Kubernetes livenessProbe that must not restart a server just
# because its engines are still loading.
LIVENESS = "liveness"


def add_health_and_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> health.aio.HealthServicer:
    """Register the standard health service and reflection (call `set_health` before serving)."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = list(service_names) + [health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    return servicer


async def set_health(servicer: health.aio.HealthServicer, service_names: Sequence[str], serving: bool) -> None:
    """Set readiness ("" and each named service); liveness stays SERVING."""
    status = SERVING if serving else NOT_SERVING
    for name in ("", *service_names):
        await servicer.set(name, status)
    await servicer.set(LIVENESS, SERVING)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def server_credentials(self) -> grpc.ServerCredentials:
        try:
            pair = (self.key.read_bytes(), self.cert.read_bytes())
        except OSError as exc:
            raise ValueError(f"cannot read TLS key/certificate: {exc}") from exc
        return grpc.ssl_server_credentials([pair])


def bind(server: grpc.aio.Server, host: str, port: int, tls: TlsFiles | None) -> int:
    """Bind `host:port` (port 0 picks a free one) and return the bound port."""
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, tls.server_credentials()) if tls else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    return bound


def read_token_file(path: str | Path) -> str:
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"auth token file {path} is empty")
    return token


class TokenFile:
    """A bearer token kept in a file, re-read whenever the file changes.

    A Kubernetes Secret mounted as a volume is updated in place when it changes (the kubelet swaps
    a symlink), so a rotated token takes effect without restarting the pod. The first read must
    succeed; later, a file briefly missing or empty keeps the last good token.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._token = read_token_file(self.path)
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ino, st.st_size

    def get(self) -> str:
        stamp = self._stat()
        if stamp is not None and stamp != self._stamp:
            try:
                self._token, self._stamp = read_token_file(self.path), stamp
            except (OSError, ValueError):
                pass  # mid-swap: keep the last good token and look again next time
        return self._token


Token = str | TokenFile  # a fixed token, or one that follows its file


def token_value(token: Token) -> str:
    return token.get() if isinstance(token, TokenFile) else token


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Require `authorization: Bearer <token>` on the methods under `protected_prefix`.

    Health and reflection stay open so Kubernetes `grpc:` probes and grpcurl's listing work.
    """

    def __init__(self, token: Token, protected_prefix: str) -> None:
        self._token = token
        self._prefix = protected_prefix

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method or ""
        if not method.startswith(self._prefix):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        given = str(metadata.get("authorization", ""))
        expected = token_value(self._token).encode()
        ok = given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), expected)
        if ok:
            return await continuation(details)
        handler = await continuation(details)
        message = "missing or wrong bearer token (send metadata 'authorization: Bearer <token>')"

        async def deny_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # pragma: no cover - makes this an async generator

        if handler is not None and handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                deny_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            deny_unary,
            request_deserializer=handler.request_deserializer if handler else None,
            response_serializer=handler.response_serializer if handler else None,
        )


def metrics_addr(grpc_host: str) -> str:
    """The address metrics bind to for a server bound to `grpc_host`: the same interface, so a
    server kept on loopback does not publish its metrics (pod addresses, load) to the network."""
    host = grpc_host.strip("[]")
    return "0.0.0.0" if host in ("", "::", "0.0.0.0") else host


class MetricsServer:
    """Prometheus exposition of one registry on its own port (0 picks a free port)."""

    def __init__(self, registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> None:
        self._httpd, self._thread = start_http_server(port, addr=addr, registry=registry)
        self.port = int(self._httpd.server_port)
        self.addr = str(self._httpd.server_address[0])

    async def stop(self) -> None:
        # In a thread: shutdown() waits for the server's next poll, up to half a second, and the
        # event loop has other servers' work to do meanwhile (in tests and the demo, several share it).
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


async def serve_health_only(health: Any, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """A plaintext server with nothing but `health` (the same servicer, the same answers), for
    Kubernetes' grpc probes, which cannot speak TLS, when the API itself uses TLS."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bound = bind(server, host, port, None)
    await server.start()
    return server, bound
