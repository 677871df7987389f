"""Sidecars for the real-engine tests: cheap to start, so one per test, on the session engine."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from llmfleet.engine.process import EngineProcess
from llmfleet.sidecar import SidecarHandle, serve_sidecar
from llmfleet.v1 import sidecar_pb2_grpc


@pytest.fixture
async def sidecar(engine: EngineProcess) -> AsyncIterator[SidecarHandle]:
    handle = await serve_sidecar(engine.url, max_num_seqs=4, metrics_port=0, load_interval_s=0.1)
    yield handle
    await handle.stop()


@pytest.fixture
async def stub(sidecar: SidecarHandle) -> AsyncIterator[sidecar_pb2_grpc.SidecarStub]:
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        yield sidecar_pb2_grpc.SidecarStub(channel)
