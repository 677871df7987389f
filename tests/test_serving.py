"""The shared server plumbing: the Prometheus endpoint serves its registry and stops without
holding up the event loop the gRPC servers run on."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from llmfleet.serving import MetricsServer


async def test_the_metrics_server_serves_its_registry_and_stops_without_blocking_the_loop():
    registry = CollectorRegistry()
    Counter("llmfleet_things", "Things", registry=registry).inc(3)
    server = MetricsServer(registry, 0, "127.0.0.1")
    url = f"http://127.0.0.1:{server.port}/metrics"
    async with httpx.AsyncClient() as client:
        assert "llmfleet_things_total 3.0" in (await client.get(url)).text

    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    before = ticks
    await server.stop()  # waits for the server's next poll (up to 0.5 s): in a thread, not the loop
    ticker.cancel()
    assert ticks > before + 1
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(url)
