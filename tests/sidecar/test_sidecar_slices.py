"""The Slices call, the dispatcher's path to a sidecar: many slices over one stream, on the
sidecar in front of the simulated engine (the same sidecar code as in front of vLLM)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from llmfleet.core.clock import wait_for_condition
from llmfleet.engine.simulated import SimulatedEngineClient, SimulatedEngineConfig
from llmfleet.serving import DRAINING_KEY
from llmfleet.sidecar import SidecarHandle, serve_sidecar
from llmfleet.v1 import sidecar_pb2, sidecar_pb2_grpc

PROMPT = [5, 6, 7, 8, 9, 10, 11, 12]


def _item(rid: str, max_tokens: int, **kw: object) -> sidecar_pb2.SliceItem:
    return sidecar_pb2.SliceItem(request_id=rid, prompt_token_ids=PROMPT, max_tokens=max_tokens, ignore_eos=True, **kw)


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimulatedEngineClient, SidecarHandle, sidecar_pb2_grpc.SidecarStub]]:
    engine = SimulatedEngineClient(SimulatedEngineConfig(max_num_seqs=8, step_base_s=0.002, step_per_seq_s=0.0))
    handle = await serve_sidecar(engine, max_num_seqs=8, load_interval_s=0.05)
    async with grpc.aio.insecure_channel(handle.address) as channel:
        yield engine, handle, sidecar_pb2_grpc.SidecarStub(channel)
    await handle.stop()


class Conversation:
    """One Slices call, with the updates it has received so far, per slice id."""

    def __init__(self, stub: sidecar_pb2_grpc.SidecarStub) -> None:
        self.call = stub.Slices()
        self.tokens: dict[int, list[int]] = {}
        self.done: dict[int, sidecar_pb2.SliceDone] = {}
        self.failed: dict[int, sidecar_pb2.SliceFailure] = {}
        self.messages = 0
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.call:
            self.messages += 1
            for u in message.updates:
                if u.HasField("failed"):
                    self.failed[u.slice_id] = u.failed
                elif u.event.HasField("tokens"):
                    self.tokens.setdefault(u.slice_id, []).extend(u.event.tokens.token_ids)
                else:
                    self.done[u.slice_id] = u.event.done

    async def send(self, starts: dict[int, sidecar_pb2.SliceItem] | None = None, cancel: tuple[int, ...] = ()) -> None:
        commands = [sidecar_pb2.SliceStart(slice_id=i, item=item) for i, item in (starts or {}).items()]
        await self.call.write(sidecar_pb2.SliceCommands(start=commands, cancel=cancel))


async def _reference(stub: sidecar_pb2_grpc.SidecarStub, item: sidecar_pb2.SliceItem) -> list[int]:
    out: list[int] = []
    async for ev in stub.RunSlice(sidecar_pb2.SliceRequest(items=[item])):
        if ev.HasField("tokens"):
            out.extend(ev.tokens.token_ids)
    return out


async def test_slices_on_one_call_match_runslice_and_share_messages(sim) -> None:
    _, _, stub = sim
    talk = Conversation(stub)
    await talk.send({i: _item(f"r{i}", 20) for i in range(6)})
    await wait_for_condition(lambda: len(talk.done) == 6, 30, what="6 slices done")
    assert all(talk.done[i].finish_reason == "length" and len(talk.tokens[i]) == 20 for i in range(6))
    assert talk.tokens[0] == await _reference(stub, _item("ref", 20))  # the same continuation as RunSlice
    # 6 slices x (20 token events + 1 end) = 126 events; decoding in step, they share messages.
    assert talk.messages < 126 / 3
    talk.call.cancel()


async def test_a_cancel_aborts_only_that_slice_in_the_engine(sim) -> None:
    engine, handle, stub = sim
    talk = Conversation(stub)
    await talk.send({1: _item("long", 1000), 2: _item("short", 30)})
    await wait_for_condition(lambda: 1 in talk.tokens and 2 in talk.tokens, 30, what="both slices running")
    await talk.send(cancel=(1,))
    await wait_for_condition(lambda: 2 in talk.done, 30, what="the other slice to finish")
    await wait_for_condition(lambda: handle.service.report().inflight_slices == 0, 30, what="nothing in flight")
    assert 1 not in talk.done and len(talk.tokens[1]) < 1000  # aborted, not run to its end
    assert (await engine.load()).running == 0
    talk.call.cancel()


async def test_closing_the_call_aborts_every_slice_on_it(sim) -> None:
    engine, handle, stub = sim
    talk = Conversation(stub)
    await talk.send({i: _item(f"r{i}", 1000) for i in range(3)})
    await wait_for_condition(lambda: len(talk.tokens) == 3, 30, what="3 slices running")
    talk.call.cancel()
    await wait_for_condition(lambda: handle.service.report().inflight_slices == 0, 30, what="slices aborted")
    await wait_for_condition(lambda: _engine_idle(engine), 30, what="the engine idle")


async def _engine_idle(engine: SimulatedEngineClient) -> bool:
    return (await engine.load()).running == 0


async def test_refusals_name_their_cause_and_the_call_goes_on(sim) -> None:
    _, handle, stub = sim
    talk = Conversation(stub)
    await talk.send({1: _item("bad", 0), 2: _item("good", 5)})
    await wait_for_condition(lambda: 1 in talk.failed and 2 in talk.done, 30, what="a refusal and a result")
    assert talk.failed[1].code == "INVALID_ARGUMENT" and "max_tokens" in talk.failed[1].message
    assert not talk.failed[1].draining
    await handle.service.drain(0.0)
    await talk.send({3: _item("late", 5)})
    await wait_for_condition(lambda: 3 in talk.failed, 30, what="a draining refusal")
    assert talk.failed[3].code == "UNAVAILABLE" and talk.failed[3].draining
    talk.call.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as err:  # RunSlice refuses alike, as a status
        await _reference(stub, _item("late-too", 5))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (DRAINING_KEY, "1") in tuple(err.value.trailing_metadata() or ())


async def test_a_drain_hands_back_a_running_slice_on_the_call(sim) -> None:
    _, handle, stub = sim
    talk = Conversation(stub)
    await talk.send({7: _item("long", 1500)})
    await wait_for_condition(lambda: 7 in talk.tokens, 30, what="the slice running")
    finished, handed = await handle.service.drain(0.0)
    await wait_for_condition(lambda: 7 in talk.done, 30, what="the hand-back")
    assert (finished, handed) == (0, 1)
    assert talk.done[7].finish_reason == "handed_back" and talk.done[7].generated == len(talk.tokens[7]) < 1500
    talk.call.cancel()
