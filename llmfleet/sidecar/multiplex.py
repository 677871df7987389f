"""The sidecar's end of the `Slices` call: many slices over one long-lived stream.

The dispatcher keeps one such call open per pod. A `SliceStart` runs exactly what a RunSlice item
runs (`SidecarService.start_slice`); a cancel aborts that slice's engine request. Every event a
slice produces goes to one shared outbox, and the response stream sends the whole outbox as one
`SliceUpdates` message each time it wakes: under load one message carries the events of many
slices, which is what makes a slice cheap for both Python processes.

When the dispatcher closes its side, the slices still running finish and the call ends; when the
call is cancelled or breaks, every slice on it is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from llmfleet.v1 import sidecar_pb2

Emit = Callable[[sidecar_pb2.SliceEvent | sidecar_pb2.SliceFailure], None]


class SliceRunner(Protocol):
    def start_slice(self, item: sidecar_pb2.SliceItem, emit: Emit) -> asyncio.Task[None] | None:
        """Run one slice, handing each event (or its failure) to `emit`; None: it ended at once."""


class Outbox:
    """Updates waiting to be sent; `take` returns all of them at once."""

    def __init__(self) -> None:
        self._items: list[sidecar_pb2.SliceUpdate] = []
        self._ready = asyncio.Event()
        self._closed = False

    def push(self, update: sidecar_pb2.SliceUpdate) -> None:
        self._items.append(update)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def take(self) -> list[sidecar_pb2.SliceUpdate]:
        """Everything pending, waiting for at least one update; [] once closed and empty."""
        while not self._items:
            if self._closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        items, self._items = self._items, []
        return items


async def multiplex(
    runner: SliceRunner, commands: AsyncIterator[sidecar_pb2.SliceCommands]
) -> AsyncIterator[sidecar_pb2.SliceUpdates]:
    """Serve one Slices call: start and cancel slices as commands arrive, stream their events."""
    outbox = Outbox()
    running: dict[int, asyncio.Task[None]] = {}

    def start(command: sidecar_pb2.SliceStart) -> None:
        slice_id = command.slice_id

        def emit(event: sidecar_pb2.SliceEvent | sidecar_pb2.SliceFailure) -> None:
            if isinstance(event, sidecar_pb2.SliceFailure):
                outbox.push(sidecar_pb2.SliceUpdate(slice_id=slice_id, failed=event))
            else:
                outbox.push(sidecar_pb2.SliceUpdate(slice_id=slice_id, event=event))

        task = runner.start_slice(command.item, emit)
        if task is None:
            return
        running[slice_id] = task
        task.add_done_callback(lambda _: running.pop(slice_id, None))

    async def read() -> None:
        try:
            async for message in commands:
                for command in message.start:
                    start(command)
                for slice_id in message.cancel:
                    task = running.get(slice_id)
                    if task is not None:
                        task.cancel()  # closes the engine stream, which aborts the request in vLLM
            # The caller is done sending: let what runs finish, then end the call.
            await asyncio.gather(*running.values(), return_exceptions=True)
        finally:
            outbox.close()

    reader = asyncio.create_task(read(), name="sidecar-slices-reader")
    try:
        while True:
            updates = await outbox.take()
            if not updates:
                break
            yield sidecar_pb2.SliceUpdates(updates=updates)
        await reader  # surfaces a broken request stream as the call's error
    finally:
        reader.cancel()
        tasks = list(running.values())
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(reader, *tasks, return_exceptions=True)
