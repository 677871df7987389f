"""The sidecar API is for its dispatcher only: with a token, unauthenticated slices, drains and
tokenize calls are refused (probes still work); a dispatcher holding the token serves as before.
A draining sidecar no longer tokenizes, so text requests go to another pod."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmfleet.client import DispatcherClient
from llmfleet.core.config import SchedulingConfig
from llmfleet.dispatcher import serve_dispatcher
from llmfleet.engine.simulated import SimulatedEngineClient
from llmfleet.sidecar import serve_sidecar
from llmfleet.v1 import sidecar_pb2, sidecar_pb2_grpc

TOKEN = "fleet-secret"


async def test_an_unauthenticated_caller_can_neither_run_slices_nor_drain() -> None:
    engine = SimulatedEngineClient()
    sidecar = await serve_sidecar(engine, auth_token=TOKEN, load_interval_s=0.05)
    try:
        async with grpc.aio.insecure_channel(sidecar.address) as ch:
            stub = sidecar_pb2_grpc.SidecarStub(ch)
            item = sidecar_pb2.SliceItem(request_id="r", prompt_token_ids=[1, 2], max_tokens=4)
            for call in (
                lambda md: stub.RunSlice(sidecar_pb2.SliceRequest(items=[item]), metadata=md).read(),
                lambda md: stub.Drain(sidecar_pb2.DrainRequest(timeout_ms=0), metadata=md),
                lambda md: stub.Tokenize(sidecar_pb2.TokenizeRequest(text="hi"), metadata=md),
            ):
                for md in ((), (("authorization", "Bearer wrong"),)):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await call(md)
                    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert not sidecar.service.draining, "an unauthenticated Drain took the pod out"
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="liveness"))
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token

        handle = await serve_dispatcher(pods={"p": sidecar.address}, sidecar_token=TOKEN,
                                        config=SchedulingConfig(policy="fcfs-rr"))  # fmt: skip
        try:
            await handle.wait_ready(1, timeout_s=10)
            async with DispatcherClient(handle.address) as c:
                g = await c.generate(prompt="hi", max_tokens=5, ignore_eos=True, timeout=10)
            assert len(g.token_ids) == 5
        finally:
            await handle.stop()
    finally:
        await sidecar.stop()
        await engine.aclose()


async def test_a_draining_sidecar_sends_text_prompts_to_another_pod() -> None:
    engines = [SimulatedEngineClient(), SimulatedEngineClient()]
    leaving, staying = [await serve_sidecar(e, load_interval_s=0.05) for e in engines]
    handle = await serve_dispatcher(pods={"leaving": leaving.address, "staying": staying.address},
                                    config=SchedulingConfig(policy="fcfs-rr"))  # fmt: skip
    try:
        await handle.wait_ready(2, timeout_s=10)
        await leaving.service.drain(0)
        async with grpc.aio.insecure_channel(leaving.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await sidecar_pb2_grpc.SidecarStub(ch).Tokenize(sidecar_pb2.TokenizeRequest(text="hi"))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        async with DispatcherClient(handle.address) as c:
            for _ in range(4):  # round-robin tokenization would hit the draining pod half the time
                g = await c.generate(prompt="hello", max_tokens=3, ignore_eos=True, timeout=10)
                assert len(g.token_ids) == 3
    finally:
        await handle.stop()
        for s in (leaving, staying):
            await s.stop()
        for e in engines:
            await e.aclose()


async def test_a_rotated_token_file_takes_effect_without_a_restart(tmp_path) -> None:
    """The operator's token Secret may be recreated; the kubelet swaps the mounted file in place.
    Sidecar and dispatcher follow the file, so the fleet keeps serving on the new token."""
    import os

    from llmfleet.serving import TokenFile

    def write(path, token: str) -> None:  # as the kubelet does: a new file swapped in
        tmp = path.with_suffix(".new")
        tmp.write_text(token)
        os.replace(tmp, path)

    sidecar_file, dispatcher_file = tmp_path / "sidecar-token", tmp_path / "dispatcher-token"
    write(sidecar_file, "old")
    write(dispatcher_file, "old")
    engine = SimulatedEngineClient()
    sidecar = await serve_sidecar(engine, auth_token=TokenFile(sidecar_file), load_interval_s=0.05)
    handle = await serve_dispatcher(pods={"p": sidecar.address}, sidecar_token=TokenFile(dispatcher_file),
                                    config=SchedulingConfig(policy="fcfs-rr"))  # fmt: skip
    try:
        await handle.wait_ready(1, timeout_s=10)
        async with DispatcherClient(handle.address) as c:
            assert len((await c.generate(prompt_ids=[1, 2], max_tokens=3, ignore_eos=True, timeout=10)).token_ids) == 3
            write(sidecar_file, "new")
            write(dispatcher_file, "new")
            g = await c.generate(prompt_ids=[1, 2], max_tokens=3, ignore_eos=True, timeout=10)
            assert len(g.token_ids) == 3 and g.usage.failovers == 0, "both sides use the new token at once"
        async with grpc.aio.insecure_channel(sidecar.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await sidecar_pb2_grpc.SidecarStub(ch).Tokenize(
                    sidecar_pb2.TokenizeRequest(text="hi"), metadata=(("authorization", "Bearer old"),)
                )
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, "the old token no longer works"
    finally:
        await handle.stop()
        await sidecar.stop()
        await engine.aclose()


async def test_the_dispatcher_calls_tls_sidecars_by_ip_checking_the_fleet_name(tmp_path) -> None:
    """With sidecar TLS, the dispatcher dials pods by IP and checks the certificate against the
    fleet's sidecar name; probes use the plaintext health-only port; the preStop drain speaks TLS."""
    import asyncio
    import sys

    from tests.tls import self_signed

    tls = self_signed(tmp_path, "demo-sidecar")
    ca = (tmp_path / "ca.crt").read_bytes()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    engine = SimulatedEngineClient()
    sidecar = await serve_sidecar(engine, tls=tls, auth_token=TOKEN, health_port=0, load_interval_s=0.05)
    handles = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.health_port}") as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, "kubelet's plaintext probe is answered"
        for server_name, works in (("demo-sidecar", True), (None, False), ("other-sidecar", False)):
            handle = await serve_dispatcher(pods={"p": sidecar.address}, sidecar_token=TOKEN,
                                            sidecar_credentials=grpc.ssl_channel_credentials(root_certificates=ca),
                                            sidecar_tls_server_name=server_name,
                                            config=SchedulingConfig(policy="fcfs-rr"))  # fmt: skip
            handles.append(handle)
            if works:
                await handle.wait_ready(1, timeout_s=10)
                async with DispatcherClient(handle.address) as c:
                    g = await c.generate(prompt_ids=[1, 2], max_tokens=4, ignore_eos=True, timeout=10)
                assert len(g.token_ids) == 4
            else:  # the certificate does not name what was asked for: no connection, never trusted
                with pytest.raises(TimeoutError):
                    await handle.wait_ready(1, timeout_s=2)
        async with grpc.aio.insecure_channel(sidecar.address) as ch:  # plaintext to the TLS port fails
            with pytest.raises(grpc.aio.AioRpcError):
                await sidecar_pb2_grpc.SidecarStub(ch).Tokenize(sidecar_pb2.TokenizeRequest(text="hi"), timeout=3)
        drain = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmfleet.cli", "sidecar", "drain", "--port", str(sidecar.port),
            "--auth-token-file", str(token_file), "--tls-ca", str(tmp_path / "ca.crt"),
            "--tls-server-name", "demo-sidecar", "--timeout", "1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(drain.communicate(), 60)
        assert drain.returncode == 0, out.decode()
        assert sidecar.service.draining
    finally:
        for handle in handles:
            await handle.stop()
        await sidecar.stop()
        await engine.aclose()
