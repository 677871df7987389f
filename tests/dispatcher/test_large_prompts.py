"""Prompts too large for the context are refused before tokenization, as INVALID_ARGUMENT, and
many of them at once do not blow up the dispatcher's memory (measured on a real dispatcher
process, as `llmfleet dispatcher` runs in a pod)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc

from llmfleet.client import DispatcherClient
from llmfleet.core.clock import wait_for_condition
from llmfleet.engine.process import free_port
from tests.dispatcher.fake_sidecar import start_fake_pod


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_forty_concurrent_4mb_prompts_are_refused_and_memory_stays_bounded() -> None:
    pod = await start_fake_pod()  # a 512-token context
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmfleet.cli", "dispatcher", "--host", "127.0.0.1", "--port", str(port),
        "--pods", pod.address, "--policy", "fcfs-rr",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with DispatcherClient(f"127.0.0.1:{port}") as probe:
            async def ready() -> bool:
                try:
                    return bool((await asyncio.wait_for(probe.stats(), 2)).pods)
                except (grpc.aio.AioRpcError, TimeoutError):
                    return False

            await wait_for_condition(ready, 60, what="the dispatcher serving with its pod")
        before = _peak_rss_mib(proc.pid)
        async with DispatcherClient(f"127.0.0.1:{port}") as c:
            too_big = ["x" * 3_900_000, "é" * 1_900_000]  # 3.8-3.9 MB: refused by gRPC before it is parsed
            results = await asyncio.gather(*(c.generate(prompt=too_big[i % 2], max_tokens=4, timeout=60) for i in range(40)),
                                           return_exceptions=True)  # fmt: skip
            # Under the request limit but far over the context: refused before tokenization.
            fits = await asyncio.gather(*(c.generate(prompt=p, max_tokens=4, timeout=60) for p in ["x" * 1_900_000, "é" * 950_000]),
                                        return_exceptions=True)  # fmt: skip
        for r in results:
            assert isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, r
            assert "larger than max" in r.details()
        for r in fits:
            assert isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.INVALID_ARGUMENT, r
            assert "context of 512 tokens cannot hold it" in r.details()
        peak = _peak_rss_mib(proc.pid)
        assert peak < 300, f"dispatcher peak RSS {peak:.0f} MiB (idle {before:.0f} MiB)"
    finally:
        proc.terminate()
        await proc.wait()
        await pod.stop()
