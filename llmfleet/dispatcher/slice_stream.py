"""The dispatcher's end of the `Slices` call: every slice on one pod over one long-lived stream.

Starting a slice with its own RunSlice call cost the dispatcher about 430 us of CPU in Python
gRPC, against about 70 us for a message on an open stream (measured on the 2-core box; see
bench/DATAPLANE.md section 6), and that per-call cost is what bound its assignments per second.
So each pod gets one `Slices` call, opened on first use and again after it breaks:

* a slice is a `SliceStart` message with an id unique within the call; cancelling it sends a
  cancel, which aborts the engine work;
* one writer task sends every start and cancel that is pending as one message, and one reader
  task hands each update to its slice's `deliver` callback;
* when the call breaks (the sidecar died, the channel closed), every slice open on it fails with
  `PodFailure`, exactly as its own call would have, and the next slice opens a new call.

Events reach the caller as the same `SliceTokens` / `SliceEnd` values RunSlice produced.
`open` delivers them by callback, so a slice needs no task of its own: the dispatcher handles
each event in the reader task (a task and a queue per slice cost it about a tenth of a
millisecond per assignment, see bench/DATAPLANE.md section 6). `run` is the same as an async
iterator, for tools and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from llmfleet.v1 import sidecar_pb2

log = logging.getLogger(__name__)


class PodFailure(Exception):
    """The sidecar could not be reached or broke mid-call; the slice may be retried elsewhere."""

    def __init__(self, message: str, *, draining: bool = False) -> None:
        super().__init__(message)
        self.draining = draining


@dataclass(frozen=True)
class SliceTokens:
    token_ids: tuple[int, ...]
    text: str
    pending_text_tokens: int = 0
    ends: bool = False  # the engine ended the request with the last of these tokens


@dataclass(frozen=True)
class SliceEnd:
    finish_reason: str  # length | stop | handed_back | error
    error: str = ""
    retryable: bool = False
    client_error: bool = False


SliceEvent = SliceTokens | SliceEnd | PodFailure


def slice_event(event: sidecar_pb2.SliceEvent) -> SliceTokens | SliceEnd:
    """The domain value of one RunSlice event."""
    if event.HasField("tokens"):
        t = event.tokens
        return SliceTokens(tuple(t.token_ids), t.text, t.pending_text_tokens, t.ends)
    d = event.done
    return SliceEnd(d.finish_reason, d.error, d.retryable, d.client_error)


Deliver = Callable[[SliceEvent], None]


class SliceStream:
    """All slices to one pod over one Slices call. `open_call` starts a new call."""

    def __init__(self, pod_id: str, open_call: Callable[[], grpc.aio.StreamStreamCall]) -> None:
        self.pod_id = pod_id
        self._open_call = open_call
        self._call: grpc.aio.StreamStreamCall | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._slices: dict[int, Deliver] = {}  # open slices on the current call
        self._starts: list[sidecar_pb2.SliceStart] = []
        self._cancels: list[int] = []
        self._pending = asyncio.Event()
        self._next_id = 0

    @property
    def open_slices(self) -> int:
        return len(self._slices)

    def open(self, item: sidecar_pb2.SliceItem, deliver: Deliver) -> int:
        """Start a slice; returns its id. `deliver` is called, in the reader task, with each of its
        events: SliceTokens, then exactly one SliceEnd or PodFailure, after which it is closed. It
        must not raise: an error in it fails only its own slice."""
        if self._call is None:
            self._open()
        slice_id = self._next_id
        self._next_id += 1
        self._slices[slice_id] = deliver
        self._starts.append(sidecar_pb2.SliceStart(slice_id=slice_id, item=item))
        self._pending.set()
        return slice_id

    def cancel(self, slice_id: int) -> None:
        """Leave a slice early (a cancel, a stop string, a preemption): the sidecar aborts the
        engine's work and nothing more is delivered. A slice already closed needs no message."""
        if self._slices.pop(slice_id, None) is not None and self._call is not None:
            self._cancels.append(slice_id)
            self._pending.set()

    async def run(self, item: sidecar_pb2.SliceItem) -> AsyncIterator[SliceTokens | SliceEnd]:
        """One slice's events, ending with its SliceEnd; raises PodFailure if it cannot run.
        Leaving the iterator early cancels the slice."""
        events: asyncio.Queue[SliceEvent] = asyncio.Queue()
        slice_id = self.open(item, events.put_nowait)
        try:
            while True:
                event = await events.get()
                if isinstance(event, PodFailure):
                    raise event
                yield event
                if isinstance(event, SliceEnd):
                    return
        finally:
            self.cancel(slice_id)  # a no-op for a slice that closed

    def _deliver(self, slice_id: int, deliver: Deliver, event: SliceEvent) -> None:
        try:
            deliver(event)
        except Exception:  # a bug above must not stop the reader: fail only this slice
            log.exception("handling an event of slice %d on pod %s failed", slice_id, self.pod_id)
            if isinstance(event, PodFailure):
                return
            self.cancel(slice_id)  # the slice ends here, as a failure (its receiver ignores one
            with contextlib.suppress(Exception):  # that comes after it closed)
                deliver(PodFailure(f"slice on pod {self.pod_id} broke while handling an event"))

    def _open(self) -> None:
        call = self._open_call()
        self._call = call
        self._tasks = [
            asyncio.create_task(self._write(call), name=f"slices-{self.pod_id}-write"),
            asyncio.create_task(self._read(call), name=f"slices-{self.pod_id}-read"),
        ]

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            while True:
                await self._pending.wait()
                self._pending.clear()
                starts, self._starts = self._starts, []
                cancels, self._cancels = self._cancels, []
                if starts or cancels:
                    await call.write(sidecar_pb2.SliceCommands(start=starts, cancel=cancels))

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        reason = f"pod {self.pod_id} ended the slice stream"
        try:
            async for message in call:
                for update in message.updates:
                    deliver = self._slices.get(update.slice_id)
                    if deliver is None:
                        continue  # a slice the caller already left
                    if update.HasField("failed"):
                        r = update.failed
                        del self._slices[update.slice_id]
                        failure = PodFailure(f"slice on pod {self.pod_id} failed: {r.code}: {r.message}", draining=r.draining)
                        self._deliver(update.slice_id, deliver, failure)
                        continue
                    event = slice_event(update.event)
                    if isinstance(event, SliceEnd):
                        del self._slices[update.slice_id]  # closed: nothing to cancel later
                    self._deliver(update.slice_id, deliver, event)
        except grpc.aio.AioRpcError as exc:
            reason = f"slice on pod {self.pod_id} failed: {exc.code().name}: {exc.details() or ''}"
        except asyncio.CancelledError:
            reason = f"slice stream to pod {self.pod_id} closed"
            raise
        except Exception as exc:  # e.g. a channel closed under the call: fail over, never hang
            log.warning("slice stream to pod %s broke unexpectedly: %r", self.pod_id, exc)
            reason = f"slice stream to pod {self.pod_id} broke: {exc!r}"
        finally:
            self._broken(call, PodFailure(reason))

    def _broken(self, call: grpc.aio.StreamStreamCall, failure: PodFailure) -> None:
        """The call is over: fail every slice still open on it; the next slice opens a new call."""
        call.cancel()  # harmless on a call that is over
        if self._call is not call:
            return
        self._call = None
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._tasks = []
        open_slices, self._slices = self._slices, {}
        self._starts, self._cancels = [], []
        for slice_id, deliver in open_slices.items():
            self._deliver(slice_id, deliver, failure)

    async def close(self) -> None:
        call, tasks = self._call, self._tasks
        if call is not None:
            call.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
