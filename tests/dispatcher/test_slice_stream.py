"""The dispatcher's end of the Slices call (`SliceStream`), against the fake sidecar: one call per
pod, starts batched into messages, cancels on early exit, and a broken call failing every slice
open on it while the next slice opens a new call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from llmfleet.core.clock import wait_for_condition
from llmfleet.dispatcher.slice_stream import PodFailure, SliceEnd, SliceStream, SliceTokens
from llmfleet.v1 import sidecar_pb2, sidecar_pb2_grpc
from tests.dispatcher.fake_sidecar import FakePod, reference, start_fake_pod

PROMPT = [11, 12, 13, 14]


def _item(rid: str, n: int) -> sidecar_pb2.SliceItem:
    return sidecar_pb2.SliceItem(request_id=rid, prompt_token_ids=PROMPT, max_tokens=n)


async def _collect(stream: SliceStream, item: sidecar_pb2.SliceItem) -> tuple[list[int], SliceEnd | None]:
    tokens: list[int] = []
    end = None
    async for event in stream.run(item):
        if isinstance(event, SliceTokens):
            tokens.extend(event.token_ids)
        else:
            end = event
    return tokens, end


@dataclass
class Setup:
    pod: FakePod  # replaced when a test restarts the sidecar
    stream: SliceStream


@contextlib.asynccontextmanager
async def one_pod(token_delay_s: float) -> AsyncIterator[Setup]:
    """A fake sidecar and a SliceStream to it over a channel that reconnects fast."""
    pod = await start_fake_pod(token_delay_s=token_delay_s)
    channel = grpc.aio.insecure_channel(pod.address, options=[("grpc.initial_reconnect_backoff_ms", 100)])
    stub = sidecar_pb2_grpc.SidecarStub(channel)
    setup = Setup(pod, SliceStream("p0", lambda: stub.Slices()))
    try:
        yield setup
    finally:
        await setup.stream.close()
        await channel.close()
        await setup.pod.stop()


async def test_slices_started_together_travel_in_one_message_on_one_call() -> None:
    async with one_pod(0.001) as setup:
        pod, stream = setup.pod, setup.stream
        results = await asyncio.gather(*(_collect(stream, _item(f"r{i}", 5)) for i in range(5)))
        for tokens, end in results:
            assert tokens == reference(PROMPT, 5) and end == SliceEnd("length")
        await _collect(stream, _item("later", 3))
        assert pod.servicer.slice_calls == 1
        assert pod.servicer.command_messages == [5, 1]
        assert stream.open_slices == 0


async def test_leaving_a_slice_early_cancels_it_on_the_sidecar() -> None:
    async with one_pod(0.02) as setup:
        pod, stream = setup.pod, setup.stream
        events = stream.run(_item("r", 500))
        assert isinstance(await anext(events), SliceTokens)
        await events.aclose()  # what the dispatcher does on a stop string, a preemption, a cancel
        await wait_for_condition(lambda: pod.servicer.cancelled == 1 and pod.servicer.active == 0, 10, what="the cancel")
        tokens, end = await _collect(stream, _item("next", 2))  # the call itself goes on
        assert len(tokens) == 2 and end == SliceEnd("length") and pod.servicer.slice_calls == 1


async def test_a_broken_call_fails_every_open_slice_and_the_next_slice_opens_a_new_call() -> None:
    async with one_pod(0.05) as setup:
        pod, stream = setup.pod, setup.stream
        running = [asyncio.create_task(_collect(stream, _item(f"r{i}", 1000))) for i in range(3)]
        await wait_for_condition(lambda: pod.servicer.active == 3, 10, what="3 slices running")
        await pod.stop()  # the sidecar dies
        for task in running:
            with pytest.raises(PodFailure, match="p0"):
                await asyncio.wait_for(task, 10)
        assert stream.open_slices == 0
        setup.pod = pod = await start_fake_pod(port=pod.port, token_delay_s=0.001)  # it comes back
        tokens, end = await asyncio.wait_for(_collect(stream, _item("again", 4)), 30)
        assert tokens == reference(PROMPT, 4) and end == SliceEnd("length")
        assert pod.servicer.slice_calls == 1


async def test_a_failure_reported_for_one_slice_fails_only_that_slice() -> None:
    async with one_pod(0.001) as setup:
        pod, stream = setup.pod, setup.stream
        pod.servicer.faults.draining = True
        with pytest.raises(PodFailure) as refused:
            await _collect(stream, _item("refused", 3))
        assert refused.value.draining and "UNAVAILABLE" in str(refused.value)
        pod.servicer.faults.draining = False
        pod.servicer.faults.break_after_tokens, pod.servicer.faults.break_times = 1, 1
        broken, fine = await asyncio.gather(
            _collect(stream, _item("broken", 5)), _collect(stream, _item("fine", 5)), return_exceptions=True
        )
        assert isinstance(broken, PodFailure) and not broken.draining
        assert fine == (reference(PROMPT, 5), SliceEnd("length"))
        assert pod.servicer.slice_calls == 1


async def test_an_error_in_a_slices_receiver_fails_only_that_slice() -> None:
    """The receiver runs in the reader task: if it raises, its slice is cancelled on the sidecar
    and ends as a PodFailure, and the other slices on the call go on."""
    async with one_pod(0.02) as setup:
        pod, stream = setup.pod, setup.stream
        seen: list[object] = []

        def receiver(event: object) -> None:
            seen.append(event)
            if isinstance(event, SliceTokens):
                raise RuntimeError("a bug above the stream")

        stream.open(_item("buggy", 500), receiver)
        tokens, end = await _collect(stream, _item("fine", 5))
        assert tokens == reference(PROMPT, 5) and end == SliceEnd("length")
        await wait_for_condition(lambda: pod.servicer.cancelled == 1 and pod.servicer.active == 0, 10, what="the cancel")
        assert isinstance(seen[0], SliceTokens) and isinstance(seen[-1], PodFailure) and len(seen) == 2
        assert stream.open_slices == 0 and pod.servicer.slice_calls == 1
