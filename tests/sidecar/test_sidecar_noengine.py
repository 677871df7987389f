"""The sidecar without a reachable engine: it reports NOT_SERVING, and `llmfleet sidecar drain` works."""

from __future__ import annotations

import asyncio
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmfleet.engine.metrics import parse_metrics
from llmfleet.engine.process import free_port
from llmfleet.sidecar import serve_sidecar
from llmfleet.v1 import sidecar_pb2, sidecar_pb2_grpc
from tests.dispatcher.test_api_fake import _reflected_services


def test_kv_capacity_from_cache_config_info():
    text = (
        "# TYPE vllm:cache_config_info gauge\n"
        'vllm:cache_config_info{block_size="128",kv_cache_size_tokens="524288",num_gpu_blocks="4096"} 1.0\n'
    )
    assert _capacity(text) == (524288, 128)
    assert _capacity(text.replace(',kv_cache_size_tokens="524288"', "")) == (4096 * 128, 128)
    assert _capacity("# nothing\n") == (0, 0)


async def test_engine_down_means_not_serving_and_drain_cli_answers():
    dead_engine = f"http://127.0.0.1:{free_port()}"
    handle = await serve_sidecar(dead_engine, load_interval_s=0.05)
    try:
        async with grpc.aio.insecure_channel(handle.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for service in ("", "llmfleet.v1.Sidecar"):
                resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
            alive = await health.Check(health_pb2.HealthCheckRequest(service="liveness"))
            assert alive.status == health_pb2.HealthCheckResponse.SERVING  # for livenessProbes
            report = await sidecar_pb2_grpc.SidecarStub(ch).StreamLoad(sidecar_pb2.LoadRequest()).read()
            assert not report.engine_healthy
            assert {"llmfleet.v1.Sidecar", "grpc.health.v1.Health"} <= await _reflected_services(ch)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmfleet.cli", "sidecar", "drain", "--port", str(handle.port), "--timeout", "5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0 and b"drained: 0 slices finished, 0 handed back" in out
        assert handle.service.draining
    finally:
        await handle.stop()


def _capacity(text: str) -> tuple[int, int]:
    load = parse_metrics(text)
    return load.kv_capacity_tokens, load.block_size
