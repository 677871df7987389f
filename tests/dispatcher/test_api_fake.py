"""The client API against fake pods: bad input, admission control, cancellation, deadlines,
auth, TLS, health, reflection, Stats and Prometheus metrics."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmfleet.client import DispatcherClient
from llmfleet.core.clock import wait_for_condition
from llmfleet.core.config import SchedulingConfig
from llmfleet.dispatcher import serve_dispatcher
from tests.dispatcher.fake_sidecar import reference, start_fake_pod
from tests.tls import self_signed

PROMPT = [5, 6, 7]


@pytest.fixture
async def fleet(fake_pods):
    handle = await serve_dispatcher(
        pods={f"pod-{i}": p.address for i, p in enumerate(fake_pods)},
        config=SchedulingConfig(policy="fcfs-rr", max_queue=3),
        metrics_port=0,
    )
    await handle.wait_ready(2, timeout_s=10)
    yield handle
    await handle.stop()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt_ids=PROMPT, max_tokens=0), "max_tokens must be at least 1"),
        (dict(max_tokens=5), "give the prompt either as text, as token_ids or as chat messages"),
        (dict(prompt="", max_tokens=5), "prompt text is empty"),
        (dict(prompt_ids=[1, -4], max_tokens=5), "token ids must be non-negative"),
        (dict(prompt_ids=PROMPT, max_tokens=5, temperature=-1.0), "temperature must be >= 0"),
        (dict(prompt_ids=PROMPT, max_tokens=5, top_p=1.5), "top_p must be in (0, 1]"),
        (dict(prompt_ids=PROMPT, max_tokens=5, top_k=-2), "top_k must be >= 0"),
        (dict(prompt_ids=PROMPT, max_tokens=5, deadline_ms=-1), "must not be negative"),
        (dict(prompt_ids=PROMPT, max_tokens=5, priority=-(2**31)), "priority must be within"),
        (dict(prompt="x" * 600, max_tokens=5), "prompt is 600 tokens long but the model's context is 512 tokens"),
        (dict(prompt_ids=list(range(500)), max_tokens=20), "set max_tokens to at most 12"),
    ],
)
async def test_bad_requests_get_invalid_argument_with_a_clear_message(fleet, kwargs, message):
    async with DispatcherClient(fleet.address) as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.generate(timeout=10, **kwargs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


async def test_text_prompts_are_tokenized_by_a_sidecar(fleet):
    async with DispatcherClient(fleet.address) as c:
        g = await c.generate(prompt="hi", max_tokens=4, timeout=10)
    assert g.token_ids == reference([b + 3 for b in b"hi"], 4)
    assert g.usage.prompt_tokens == 2


async def test_duplicate_live_request_id_is_refused(fleet, fake_pods):
    for p in fake_pods:
        p.servicer.token_delay_s = 0.05
    async with DispatcherClient(fleet.address) as c:
        first = c.stream(prompt_ids=PROMPT, max_tokens=100, request_id="dup")
        await first.read()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.generate(prompt_ids=PROMPT, max_tokens=2, request_id="dup", timeout=10)
        first.cancel()
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_admission_control_rejects_beyond_the_bound_then_recovers(fleet, fake_pods):
    # 2 pods x 4 slots run at once; max_queue=3 more may wait; the next is refused.
    for p in fake_pods:
        p.servicer.token_delay_s = 0.02
    async with DispatcherClient(fleet.address) as c:
        calls = [c.stream(prompt_ids=PROMPT, max_tokens=50, ignore_eos=True) for _ in range(11)]
        await wait_for_condition(lambda: fleet.dispatcher.backlog() >= 3, 10, what="a full queue")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.generate(prompt_ids=PROMPT, max_tokens=5, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in err.value.details()
        hint = dict(err.value.trailing_metadata())["retry-after-ms"]
        assert int(hint) > 0
        for call in calls:
            call.cancel()
        await wait_for_condition(lambda: not fleet.dispatcher.queue and not fleet.dispatcher.running, 10)
        g = await c.generate(prompt_ids=PROMPT, max_tokens=5, timeout=10)
        assert len(g.token_ids) == 5
    assert fleet.dispatcher.rejected >= 1


async def test_client_cancel_cancels_the_slice_on_the_pod(fleet, fake_pods):
    for p in fake_pods:
        p.servicer.token_delay_s = 0.05
    async with DispatcherClient(fleet.address) as c:
        call = c.stream(prompt_ids=PROMPT, max_tokens=200, ignore_eos=True)
        await call.read()
        assert sum(p.servicer.active for p in fake_pods) == 1
        call.cancel()
        await wait_for_condition(lambda: sum(p.servicer.active for p in fake_pods) == 0, 10, what="slice cancelled")
    assert sum(p.servicer.cancelled for p in fake_pods) == 1
    assert not fleet.dispatcher.running


async def test_cancel_rpc_ends_the_stream_with_cancelled(fleet, fake_pods):
    for p in fake_pods:
        p.servicer.token_delay_s = 0.05
    async with DispatcherClient(fleet.address) as c:
        call = c.stream(prompt_ids=PROMPT, max_tokens=200, request_id="to-cancel")
        await call.read()
        assert await c.cancel("to-cancel") is True
        assert await c.cancel("unknown") is False
        with pytest.raises(grpc.aio.AioRpcError) as err:
            while await call.read() is not grpc.aio.EOF:
                pass
    assert err.value.code() == grpc.StatusCode.CANCELLED
    await wait_for_condition(lambda: sum(p.servicer.active for p in fake_pods) == 0, 10, what="slice cancelled")


@pytest.mark.parametrize("how", ["deadline_ms", "grpc-timeout"])
async def test_deadlines_end_the_request_and_its_engine_work(fleet, fake_pods, how):
    for p in fake_pods:
        p.servicer.token_delay_s = 0.05
    async with DispatcherClient(fleet.address) as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            if how == "deadline_ms":
                await c.generate(prompt_ids=PROMPT, max_tokens=500, deadline_ms=300)
            else:
                await c.generate(prompt_ids=PROMPT, max_tokens=500, timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_for_condition(lambda: sum(p.servicer.active for p in fake_pods) == 0, 10, what="engine work stopped")
    await wait_for_condition(lambda: not fleet.dispatcher.running, 10)


async def test_stats_health_reflection_and_metrics(fleet):
    async with DispatcherClient(fleet.address) as c:
        await c.generate(prompt_ids=PROMPT, max_tokens=3, timeout=10)
        stats = await c.stats()
    assert stats.policy == "fcfs-rr" and stats.max_queue == 3 and stats.completed == 1
    assert sorted(p.pod_id for p in stats.pods) == ["pod-0", "pod-1"]
    assert all(p.healthy and p.max_num_seqs == 4 for p in stats.pods)
    async with grpc.aio.insecure_channel(fleet.address) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="llmfleet.v1.Dispatcher"))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        names = await _reflected_services(ch)
    assert {"llmfleet.v1.Dispatcher", "grpc.health.v1.Health"} <= names
    text = httpx.get(f"http://127.0.0.1:{fleet.metrics_port}/metrics").text
    for name in (
        "llmfleet_dispatcher_queue_length",
        "llmfleet_dispatcher_slice_seconds_bucket",
        "llmfleet_dispatcher_ttft_seconds_bucket",
        "llmfleet_dispatcher_e2e_seconds_count 1.0",
        "llmfleet_dispatcher_migrations_total",
        'llmfleet_dispatcher_pod_inflight{pod="pod-0"}',
    ):
        assert name in text


async def _reflected_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for resp in stub.ServerReflectionInfo(one()):
        return {s.name for s in resp.list_services_response.service}
    return set()


async def test_bearer_token_is_required_but_health_stays_open(fake_pods):
    handle = await serve_dispatcher(pods={"p": fake_pods[0].address}, auth_token="s3cret")
    try:
        await handle.wait_ready(1, timeout_s=10)
        for token in (None, "wrong"):
            async with DispatcherClient(handle.address, token=token) as c:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await c.generate(prompt_ids=PROMPT, max_tokens=2, timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.aio.AioRpcError):
                    await c.stats()
        async with DispatcherClient(handle.address, token="s3cret") as c:
            assert len((await c.generate(prompt_ids=PROMPT, max_tokens=2, timeout=10)).token_ids) == 2
        async with grpc.aio.insecure_channel(handle.address) as ch:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    finally:
        await handle.stop()


async def test_tls_client_api(fake_pods, tmp_path):
    tls = self_signed(tmp_path)
    handle = await serve_dispatcher(pods={"p": fake_pods[0].address}, tls=tls, host="localhost", openai_port=0,
                                    health_port=0)  # fmt: skip
    try:
        await handle.wait_ready(1, timeout_s=10)
        # A plaintext probe (kubelet's grpc probe) gets its answer from the health-only port.
        async with grpc.aio.insecure_channel(f"localhost:{handle.health_port}") as ch:
            for service in ("", "llmfleet.v1.Dispatcher", "liveness"):
                resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
        async with DispatcherClient(f"localhost:{handle.health_port}") as probe_port:
            with pytest.raises(grpc.aio.AioRpcError) as err:  # and nothing else is served there
                await probe_port.generate(prompt_ids=PROMPT, max_tokens=1, timeout=3)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # The OpenAI front serves the same certificate.
        import ssl

        import httpx

        assert handle.openai_base_url is not None and handle.openai_base_url.startswith("https://")
        url = handle.openai_base_url.replace("127.0.0.1", "localhost") + "/models"
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(tls.cert))) as http:
            assert (await http.get(url)).status_code == 200
        target = f"localhost:{handle.port}"
        async with DispatcherClient(target, root_certificates=tls.cert.read_bytes()) as c:
            g = await c.generate(prompt_ids=PROMPT, max_tokens=3, timeout=10)
            assert g.token_ids == reference(PROMPT, 3)
        async with DispatcherClient(target) as plain:  # plaintext against a TLS port fails
            with pytest.raises(grpc.aio.AioRpcError):
                await plain.generate(prompt_ids=PROMPT, max_tokens=3, timeout=3)
    finally:
        await handle.stop()


async def test_overload_memory_stays_bounded(fleet, fake_pods):
    """Hammering a full dispatcher: every extra request is refused at once, nothing piles up."""
    for p in fake_pods:
        p.servicer.token_delay_s = 0.05
    async with DispatcherClient(fleet.address) as c:
        calls = [c.stream(prompt_ids=PROMPT, max_tokens=100) for _ in range(200)]
        codes = []

        async def outcome(call):
            try:
                async for _ in call:
                    pass
                codes.append("ok")
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code().name)
            except asyncio.CancelledError:
                codes.append("cancelled-here")

        waiter = asyncio.gather(*(outcome(call) for call in calls))
        await wait_for_condition(lambda: codes.count("RESOURCE_EXHAUSTED") >= 189, 20, what="rejections")
        assert len(fleet.dispatcher.queue) + len(fleet.dispatcher.running) <= 3 + 8
        for call in calls:
            call.cancel()
        await waiter


async def test_a_burst_beyond_grpc_cores_pending_limit_is_served_without_error():
    """1,500 streams opened at once: more than gRPC core's default 1,000 pending calls."""
    pod = await start_fake_pod(token_delay_s=0, max_num_seqs=4096)
    handle = await serve_dispatcher(pods={"p": pod.address}, config=SchedulingConfig(policy="fcfs-rr", max_queue=10_000))
    try:
        await handle.wait_ready(1, timeout_s=10)
        async with DispatcherClient(handle.address) as c:
            results = await asyncio.gather(
                *(c.generate(prompt_ids=PROMPT, max_tokens=2, ignore_eos=True, timeout=120) for _ in range(1500)),
                return_exceptions=True,
            )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors[:3]
        assert all(r.token_ids == reference(PROMPT, 2) for r in results)
    finally:
        await handle.stop()
        await pod.stop()


@pytest.mark.parametrize(("host", "expected"), [("127.0.0.1", "127.0.0.1"), ("[::]", "0.0.0.0"), ("0.0.0.0", "0.0.0.0")])
def test_metrics_bind_where_the_server_binds(host, expected):
    from llmfleet.serving import metrics_addr

    assert metrics_addr(host) == expected


async def test_a_loopback_dispatcher_keeps_its_metrics_on_loopback(fake_pods):
    handle = await serve_dispatcher(pods={"a": fake_pods[0].address}, host="127.0.0.1", metrics_port=0)
    try:
        assert handle._metrics_server is not None and handle._metrics_server.addr == "127.0.0.1"
    finally:
        await handle.stop()


async def test_a_policy_that_needs_true_lengths_is_refused_at_start(fake_pods):
    with pytest.raises(ValueError, match="'oracle-srpt' needs true output lengths"):
        await serve_dispatcher(pods={"a": fake_pods[0].address}, config=SchedulingConfig(policy="oracle-srpt"))


async def test_readiness_turns_off_for_the_whole_shutdown_grace(fake_pods):
    """SIGTERM's grace lets running requests finish; the health check says NOT_SERVING from its
    first moment, so Kubernetes stops routing new work to a dispatcher that is going away."""
    from llmfleet.core.clock import wait_for_condition

    for p in fake_pods:
        p.servicer.token_delay_s = 0.02
    handle = await serve_dispatcher(pods={f"p{i}": p.address for i, p in enumerate(fake_pods)},
                                    config=SchedulingConfig(policy="fcfs-rr"))  # fmt: skip
    await handle.wait_ready(2, timeout_s=10)

    async def status() -> int:
        async with grpc.aio.insecure_channel(handle.address) as ch:
            req = health_pb2.HealthCheckRequest(service="llmfleet.v1.Dispatcher")
            return (await health_pb2_grpc.HealthStub(ch).Check(req, timeout=5)).status

    async with DispatcherClient(handle.address) as c:
        running = asyncio.create_task(c.generate(prompt_ids=PROMPT, max_tokens=100, ignore_eos=True, timeout=30))
        await wait_for_condition(lambda: handle.dispatcher.running, 5, what="a running request")
        assert await status() == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(handle.stop(grace_s=10))
        await wait_for_condition(lambda: handle._stopped, 5, what="shutdown begun")
        await wait_for_condition(lambda: not handle.health_serving[0], 5, what="readiness off")
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING and not running.done()
        g = await running
        assert len(g.token_ids) == 100, "the running request still finished within the grace"
        await stopping
