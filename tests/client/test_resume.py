"""Dispatcher high availability without shared state: a dispatcher SIGKILLed mid-stream, and the
client carries on against a second replica with `resume`, losing and repeating no token; the same
from the shell with `llmfleet client --target A,B`."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import grpc
import pytest

from llmfleet.client import DispatcherClient
from llmfleet.core.clock import wait_for_condition
from llmfleet.engine.process import free_port
from llmfleet.engine.simulated import SimulatedEngineClient
from llmfleet.sidecar import serve_sidecar
from tests.probes import serving

PROMPT = [21, 22, 23, 24]
N = 300


async def _dispatcher(pods: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmfleet.cli", "dispatcher", "--host", "127.0.0.1", "--port", str(port),
        "--pods", pods, "--policy", "fcfs-rr", "--slice-tokens", "32",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    target = f"127.0.0.1:{port}"
    await wait_for_condition(lambda: serving(target), 60, what=f"dispatcher {target} serving")
    return proc, target


@pytest.fixture
async def replicas():
    """Two dispatcher processes over the same two simulated sidecars, and the reference output."""
    async with SimulatedEngineClient() as engine:
        ref = await engine.complete(PROMPT, N, ignore_eos=True)
    sidecars = [await serve_sidecar(SimulatedEngineClient(), load_interval_s=0.1) for _ in range(2)]
    pods = ",".join(s.address for s in sidecars)
    procs = [await _dispatcher(pods) for _ in range(2)]
    yield procs, list(ref.token_ids), ref.text
    for proc, _ in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    for s in sidecars:
        await s.stop()


async def test_a_client_resumes_on_another_replica_when_its_dispatcher_dies(replicas) -> None:
    (first, a), (_, b), ref_ids, ref_text = *replicas[0], *replicas[1:]
    async with DispatcherClient([a, b], retry_backoff_s=0.05) as c:
        ids: list[int] = []
        text: list[str] = []
        final = None
        async for msg in c.resumable_stream(prompt_ids=PROMPT, max_tokens=N, ignore_eos=True, timeout=120):
            if not ids:
                first.send_signal(signal.SIGKILL)  # mid-stream: the first message is in, the rest is not
            ids += msg.token_ids
            text.append(msg.text)
            if msg.finish_reason:
                final = msg
    assert first.returncode is None or first.returncode != 0
    assert final is not None and final.finish_reason == "length"
    assert ids == ref_ids, "no token lost or repeated across the dispatcher's death"
    assert "".join(text) == ref_text
    assert 0 < final.usage.resumed_tokens < N, "the second replica continued, it did not start over"
    assert final.usage.completion_tokens == N


async def test_the_client_cli_fails_over_between_replicas(replicas) -> None:
    (first, a), (_, b), ref_ids, _ = *replicas[0], *replicas[1:]
    first.send_signal(signal.SIGKILL)
    await first.wait()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmfleet.cli", "client", "--target", f"{a},{b}", "generate",
        "--token-ids", ",".join(map(str, PROMPT)), "--max-tokens", str(N), "--ignore-eos", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["token_ids"] == ref_ids


async def test_without_retries_a_dead_dispatcher_is_an_error(replicas) -> None:
    (first, a), _b, _ref_ids, _ = *replicas[0], *replicas[1:]
    first.send_signal(signal.SIGKILL)
    await first.wait()
    async with DispatcherClient(a, retries=0) as c:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.generate(prompt_ids=PROMPT, max_tokens=8, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
