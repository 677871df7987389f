"""A hung pod (its sidecar SIGSTOPped: no error, no close, just silence) is noticed: its slices
resume elsewhere within the progress timeout with exactly the right tokens, and new requests go
elsewhere once its load reports stop."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from llmfleet.client import DispatcherClient
from llmfleet.core.clock import wait_for_condition
from llmfleet.core.config import SchedulingConfig
from llmfleet.dispatcher import serve_dispatcher
from llmfleet.dispatcher.model import DispatcherSettings
from llmfleet.engine.process import free_port
from llmfleet.engine.simulated import SimulatedEngineClient
from llmfleet.sidecar import serve_sidecar

PROMPT = [11, 12, 13]
N = 300


async def test_a_sigstopped_sidecar_is_left_and_its_streams_resume_elsewhere() -> None:
    async with SimulatedEngineClient() as reference_engine:
        ref = list((await reference_engine.complete(PROMPT, N, ignore_eos=True)).token_ids)
    port = free_port()
    victim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmfleet.cli", "sidecar", "--engine", "simulated", "--host", "127.0.0.1",
        "--port", str(port), "--load-interval", "0.1",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    good_engine = SimulatedEngineClient()
    good = await serve_sidecar(good_engine, load_interval_s=0.1)
    settings = DispatcherSettings(slice_progress_timeout_s=2.0, load_report_timeout_s=1.0)
    handle = await serve_dispatcher(pods={"victim": f"127.0.0.1:{port}"}, config=SchedulingConfig(policy="fcfs-rr"),
                                    settings=settings)  # fmt: skip
    d = handle.dispatcher
    try:
        await handle.wait_ready(1, timeout_s=60)
        async with DispatcherClient(handle.address) as c:
            call = c.stream(prompt_ids=PROMPT, max_tokens=N, ignore_eos=True, timeout=60)
            ids = list((await call.read()).token_ids)  # streaming from the victim
            victim.send_signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            await d.set_pods({"victim": f"127.0.0.1:{port}", "good": good.address})
            await wait_for_condition(lambda: not d.pods["victim"].healthy(d.clock.now()), 5,
                                     what="the silent pod marked unhealthy")  # fmt: skip
            assert time.monotonic() - stopped_at < 3.0, "stale load reports give it away within the report timeout"
            # A new request goes to the good pod at once, not into the hung one.
            fresh = await c.generate(prompt_ids=[7, 8], max_tokens=20, ignore_eos=True, timeout=10)
            assert fresh.usage.failovers == 0 and len(fresh.token_ids) == 20
            usage = None
            while (msg := await call.read()) is not None and hasattr(msg, "token_ids"):
                ids += msg.token_ids
                if msg.finish_reason:
                    usage = msg.usage
                    break
        assert ids == ref, "resumed elsewhere from exactly the tokens the client had"
        assert usage is not None and usage.failovers == 1
        assert time.monotonic() - stopped_at < 2.0 + 10.0
    finally:
        victim.send_signal(signal.SIGCONT)
        victim.kill()
        await victim.wait()
        await handle.stop()
        await good.stop()
        await good_engine.aclose()
