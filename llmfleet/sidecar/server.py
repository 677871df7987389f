"""The sidecar's gRPC service: runs slices on the local vLLM engine with exact continuation.

A slice item carries the prompt's token ids and every token generated so far; the sidecar sends
their concatenation to vLLM with `max_tokens` equal to the slice length, so a request cut into
slices produces exactly the tokens one long request would (at temperature 0). The priority is
passed through to vLLM (lower runs first). Cancelling a RunSlice call closes the engine streams,
which aborts the work inside vLLM. The dispatcher runs its slices over one `Slices` call per pod
instead (`llmfleet.sidecar.multiplex`), where a slice costs a message rather than a call.

Draining (the Drain RPC, SIGTERM via the CLI, or `llmfleet sidecar drain` as a preStop hook):
new slices are refused with UNAVAILABLE (the dispatcher re-queues them untouched), slices in
flight run to their end; any still running when the timeout passes are *handed back*: they end
with finish_reason "handed_back" after the tokens they already streamed, and the dispatcher
resumes them elsewhere. No slice is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from llmfleet.core.clock import Clock, RealClock
from llmfleet.core.sampling import SamplingParams
from llmfleet.engine.client import EngineClient, EngineLike
from llmfleet.engine.detokenize import TextStream
from llmfleet.engine.errors import EngineError, EngineRequestError
from llmfleet.engine.metrics import EngineLoad
from llmfleet.serving import DRAINING_KEY, set_health
from llmfleet.sidecar.metrics import SidecarMetrics
from llmfleet.sidecar.multiplex import Emit, multiplex
from llmfleet.sidecar.tokenizing import EngineTokenizer
from llmfleet.v1 import sidecar_pb2, sidecar_pb2_grpc

log = logging.getLogger(__name__)
SERVICE = "llmfleet.v1.Sidecar"
DEFAULT_MAX_NUM_SEQS = 256


def sampling_from_proto(s: sidecar_pb2.Sampling, max_tokens: int) -> SamplingParams:
    extra: dict[str, object] = {}
    if s.min_tokens > 0:
        extra["min_tokens"] = min(int(s.min_tokens), max_tokens)
    if s.logit_bias:
        extra["logit_bias"] = {str(k): float(v) for k, v in s.logit_bias.items()}
    return SamplingParams(
        temperature=float(s.temperature),
        top_p=float(s.top_p) if s.top_p > 0 else 1.0,
        top_k=int(s.top_k) if s.top_k > 0 else None,
        seed=int(s.seed) if s.HasField("seed") else None,
        stop_token_ids=tuple(s.stop_token_ids),
        include_stop_str_in_output=s.include_stop_str_in_output,
        extra=extra,
    )


@dataclass(eq=False)  # identity hashing: kept in a set while running
class _RunningSlice:
    items: int
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    handed_back: bool = False


class SidecarService(sidecar_pb2_grpc.SidecarServicer):
    """Adapter between the sidecar protocol and one `EngineClient`."""

    def __init__(
        self,
        engine: str | EngineLike,
        *,
        group: str = "",
        max_num_seqs: int | None = None,
        load_interval_s: float = 0.25,
        clock: Clock | None = None,
        metrics: SidecarMetrics | None = None,
    ) -> None:
        # A URL means a real vLLM server; an object (e.g. a simulated engine) answers the same calls.
        self.engine: EngineLike = EngineClient(engine.rstrip("/"), timeout=600.0) if isinstance(engine, str) else engine
        self.engine_url = self.engine.base_url
        self.group = group
        self.max_num_seqs = max_num_seqs or DEFAULT_MAX_NUM_SEQS
        self.load_interval_s = load_interval_s
        self.clock = clock or RealClock()
        self.metrics = metrics or SidecarMetrics()
        self.draining = False
        self.engine_healthy = False
        self.load = EngineLoad()
        self.kv_capacity_tokens = 0
        self.block_size = 0
        self.max_model_len = 0
        self._slices: set[_RunningSlice] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._poller: asyncio.Task[None] | None = None
        self.health: object | None = None  # set by serve_sidecar
        self._published = False
        self.tokenizer = EngineTokenizer(self.engine)

    # ----- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._poller = asyncio.create_task(self._poll_loop(), name="sidecar-load-poller")

    async def close(self) -> None:
        if self._poller:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.engine.aclose()

    async def _poll_once(self) -> None:
        healthy = await self.engine.health()
        if healthy:
            try:
                self.load = await self.engine.load()
                if not self.kv_capacity_tokens and self.load.kv_capacity_tokens:
                    self.kv_capacity_tokens, self.block_size = self.load.kv_capacity_tokens, self.load.block_size
                if not self.max_model_len:
                    self.max_model_len = await self.engine.max_model_len()
                await self.tokenizer.compare_once()  # ready only once slices can be detokenized
            except EngineError as exc:
                log.warning("load scrape of %s failed: %s", self.engine_url, exc)
                healthy = False
            except (OSError, ValueError) as exc:
                log.error("cannot load the tokenizer of %s (set --tokenizer): %s", self.engine_url, exc)
                healthy = False
        m = self.metrics
        m.engine_running.set(self.load.running)
        m.engine_waiting.set(self.load.waiting)
        m.engine_kv.set(self.load.kv_cache_usage)
        if healthy != self.engine_healthy or not self._published:
            self.engine_healthy = healthy
            await self._publish_health()

    async def _publish_health(self) -> None:
        self._published = True
        if self.health is not None:
            await set_health(self.health, [SERVICE], self.engine_healthy and not self.draining)  # type: ignore[arg-type]

    async def _poll_loop(self) -> None:
        while True:
            try:
                await self._poll_once()
            except Exception:  # never let the poller die; the next round tries again
                log.exception("sidecar load poll failed")
            await self.clock.sleep(self.load_interval_s)

    # ----- slices -------------------------------------------------------------------------------
    async def RunSlice(  # noqa: N802 - gRPC method name
        self, request: sidecar_pb2.SliceRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sidecar_pb2.SliceEvent]:
        refused = self._refusal(request)
        if refused is not None:
            if refused.draining:
                context.set_trailing_metadata(((DRAINING_KEY, "1"),))  # read by clients, not the text
            await context.abort(grpc.StatusCode[refused.code], refused.message)
        queue: asyncio.Queue[sidecar_pb2.SliceEvent] = asyncio.Queue()
        running = _RunningSlice(items=len(request.items))
        self._track(running)
        running.tasks = [asyncio.create_task(self._run_item(item, queue.put_nowait, running)) for item in request.items]
        try:
            remaining = len(request.items)
            while remaining:
                event = await queue.get()
                if event.HasField("done"):
                    remaining -= 1
                yield event
        finally:
            for task in running.tasks:
                task.cancel()
            await asyncio.gather(*running.tasks, return_exceptions=True)
            self._untrack(running)

    async def Slices(  # noqa: N802
        self, request_iterator: AsyncIterator[sidecar_pb2.SliceCommands], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sidecar_pb2.SliceUpdates]:
        async for updates in multiplex(self, request_iterator):
            yield updates

    def start_slice(self, item: sidecar_pb2.SliceItem, emit: Emit) -> asyncio.Task[None] | None:
        """Run one slice item of a Slices call in its own task, handing each event to `emit`; it
        counts as in flight (for load reports and draining) until the task ends. A slice that
        cannot start here is refused as RunSlice would end its call, and None is returned."""
        refused = self._refusal(sidecar_pb2.SliceRequest(items=[item]))
        if refused is not None:
            emit(refused)
            return None
        running = _RunningSlice(items=1)
        self._track(running)
        task = asyncio.create_task(self._run_item(item, emit, running))
        running.tasks = [task]
        task.add_done_callback(lambda _: self._untrack(running))
        return task

    def _refusal(self, request: sidecar_pb2.SliceRequest) -> sidecar_pb2.SliceFailure | None:
        """Why these slices cannot start here (both slice RPCs refuse alike); None: they can."""
        if self.draining:
            return sidecar_pb2.SliceFailure(code="UNAVAILABLE", message="sidecar is draining; run the slice elsewhere", draining=True)
        problem = _validate(request)
        return sidecar_pb2.SliceFailure(code="INVALID_ARGUMENT", message=problem) if problem else None

    def _track(self, running: _RunningSlice) -> None:
        self._slices.add(running)
        self._idle.clear()
        self.metrics.inflight.set(len(self._slices))

    def _untrack(self, running: _RunningSlice) -> None:
        self._slices.discard(running)
        self.metrics.inflight.set(len(self._slices))
        if not self._slices:
            self._idle.set()

    async def _run_item(
        self, item: sidecar_pb2.SliceItem, emit: Callable[[sidecar_pb2.SliceEvent], None], running: _RunningSlice
    ) -> None:
        rid = item.request_id
        context = [*item.prompt_token_ids, *item.generated_token_ids]
        produced = 0
        finish: str | None = None
        started = self.clock.now()

        def done(reason: str, error: str = "", retryable: bool = False, client_error: bool = False) -> None:
            self.metrics.slices.labels(reason).inc()
            self.metrics.slice_seconds.observe(self.clock.now() - started)
            emit(
                sidecar_pb2.SliceEvent(
                    request_id=rid,
                    done=sidecar_pb2.SliceDone(
                        finish_reason=reason,
                        error=error,
                        retryable=retryable,
                        client_error=client_error,
                        generated=produced,
                    ),
                )
            )

        try:
            # Our own text, not the engine's: vLLM's is wrong after a cut inside a character.
            text = TextStream.resume(await self.tokenizer.get(), context, item.pending_text_tokens)
            keep_stop_text = item.sampling.include_stop_str_in_output
            stream = self.engine.stream(
                context,
                item.max_tokens,
                ignore_eos=item.ignore_eos,
                priority=item.priority,
                sampling=sampling_from_proto(item.sampling, item.max_tokens),
            )
            try:
                async for chunk in stream:
                    ids = list(chunk.token_ids)
                    if ids and not produced:
                        self.metrics.first_token_seconds.observe(self.clock.now() - started)
                    if produced + len(ids) > item.max_tokens:
                        raise _Malformed(f"engine returned more than max_tokens={item.max_tokens} tokens")
                    for i, token in enumerate(ids):
                        # A stop token (EOS, stop_token_ids) ends the request; vLLM leaves its text out.
                        ends = chunk.finish_reason == "stop" and i == len(ids) - 1
                        piece = "" if ends and not keep_stop_text else text.step(token)
                        produced += 1
                        emit(
                            sidecar_pb2.SliceEvent(
                                request_id=rid,
                                tokens=sidecar_pb2.SliceTokens(
                                    token_ids=[token], text=piece, pending_text_tokens=text.pending, ends=ends
                                ),
                            )
                        )
                    self.metrics.tokens.inc(len(ids))
                    if chunk.finish_reason:
                        finish = chunk.finish_reason
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            if finish is None:
                raise _Malformed("engine stream ended without a finish reason")
            if finish == "length" and produced < item.max_tokens:
                # vLLM stops early at the context limit; the request cannot go on anywhere.
                done("error", f"engine stopped at {produced} of {item.max_tokens} tokens (context full)", False, True)
                return
            done("length" if finish == "length" else "stop")
        except asyncio.CancelledError:
            if running.handed_back:
                done("handed_back")
                return
            raise
        except _Malformed as exc:
            done("error", str(exc), retryable=True)
        except EngineRequestError as exc:
            done("error", str(exc), retryable=False, client_error=True)
        except EngineError as exc:
            done("error", str(exc), retryable=exc.retryable)
        except ValueError as exc:
            done("error", str(exc), retryable=False, client_error=True)

    # ----- other RPCs ---------------------------------------------------------------------------
    async def Tokenize(  # noqa: N802
        self, request: sidecar_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> sidecar_pb2.TokenizeResponse:
        if self.draining:  # its engine is going away: the dispatcher tokenizes on another pod
            context.set_trailing_metadata(((DRAINING_KEY, "1"),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "sidecar is draining; tokenize elsewhere")
        try:
            if request.messages:
                ids = await self.engine.tokenize_chat([(m.role, m.content) for m in request.messages])
            else:
                ids = await self.tokenizer.tokenize(request.text)
            if not self.max_model_len:
                self.max_model_len = await self.engine.max_model_len()
        except EngineRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"engine could not tokenize: {exc}")
            raise  # unreachable; abort raises
        except EngineError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"engine tokenize failed: {exc}")
            raise
        return sidecar_pb2.TokenizeResponse(token_ids=ids, max_model_len=self.max_model_len)

    async def Info(self, request: sidecar_pb2.InfoRequest, context: grpc.aio.ServicerContext) -> sidecar_pb2.InfoResponse:  # noqa: N802
        if not self.max_model_len or not self.kv_capacity_tokens:
            with contextlib.suppress(Exception):
                await self._poll_once()
        model = ""
        with contextlib.suppress(EngineError):
            model = await self.engine.model()
        return sidecar_pb2.InfoResponse(
            vocab_size=self.tokenizer.vocab_size,
            model=model,
            max_model_len=self.max_model_len,
            group=self.group,
            max_num_seqs=self.max_num_seqs,
            kv_capacity_tokens=self.kv_capacity_tokens,
            block_size=self.block_size,
            engine_url=self.engine_url,
        )

    def report(self) -> sidecar_pb2.LoadReport:
        load = self.load
        return sidecar_pb2.LoadReport(
            running=load.running,
            waiting=load.waiting,
            kv_cache_usage=load.kv_cache_usage,
            prefix_cache_hits=load.prefix_cache_hits,
            prefix_cache_queries=load.prefix_cache_queries,
            preemptions=load.preemptions,
            inflight_slices=len(self._slices),
            inflight_requests=sum(s.items for s in self._slices),
            draining=self.draining,
            engine_healthy=self.engine_healthy,
            kv_capacity_tokens=self.kv_capacity_tokens,
            max_num_seqs=self.max_num_seqs,
            group=self.group,
            vocab_size=self.tokenizer.vocab_size,
        )

    async def StreamLoad(  # noqa: N802
        self, request: sidecar_pb2.LoadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sidecar_pb2.LoadReport]:
        interval = max(0.05, (request.interval_ms or 250) / 1000.0)
        while True:
            yield self.report()
            await self.clock.sleep(interval)

    async def drain(self, timeout_s: float) -> tuple[int, int]:
        """Refuse new slices, wait for in-flight ones, hand back what is left at the timeout."""
        self.draining = True
        self.metrics.draining.set(1)
        await self._publish_health()
        before = len(self._slices)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(0.0, timeout_s))
            return before, 0
        except TimeoutError:
            left = list(self._slices)
            for s in left:
                s.handed_back = True
                for task in s.tasks:
                    task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=10.0)
            return before - len(left), len(left)

    async def Drain(self, request: sidecar_pb2.DrainRequest, context: grpc.aio.ServicerContext) -> sidecar_pb2.DrainResponse:  # noqa: N802
        timeout = (request.timeout_ms or 30_000) / 1000.0
        finished, handed = await self.drain(timeout)
        return sidecar_pb2.DrainResponse(finished=finished, handed_back=handed)


class _Malformed(Exception):
    pass


def _validate(request: sidecar_pb2.SliceRequest) -> str | None:
    if not request.items:
        return "a slice needs at least one item"
    seen: set[str] = set()
    for i, item in enumerate(request.items):
        if not item.request_id:
            return f"items[{i}].request_id is empty"
        if item.request_id in seen:
            return f"request_id {item.request_id!r} appears twice in one slice"
        seen.add(item.request_id)
        if not item.prompt_token_ids:
            return f"items[{i}].prompt_token_ids is empty"
        if item.max_tokens < 1:
            return f"items[{i}].max_tokens must be >= 1, got {item.max_tokens}"
        if item.sampling.stop:
            return f"items[{i}].sampling.stop must be empty: stop strings may straddle slices, the dispatcher checks them"
        if not 0 <= item.pending_text_tokens <= len(item.generated_token_ids):
            return f"items[{i}].pending_text_tokens must be within the generated tokens"
    return None
