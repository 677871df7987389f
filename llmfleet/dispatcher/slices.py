"""Running slices: what the dispatcher does with one Assignment or Preempt, and after a slice.

Tokens reach the client as the slice produces them, and each one is appended to the request's
`generated` list at that moment, so a slice that breaks (sidecar killed, engine error, drain
hand-back) resumes from exactly the tokens the client already has.

A slice has no task of its own: its events are handled as they arrive, in the reader task of
the pod's `Slices` call (`SliceStream.open`), and stopping it (a cancel, a deadline, a
preemption, a stalled pod) closes it at once. Under a burst of short requests a task and a queue
per slice were a measurable part of each assignment's cost (bench/DATAPLANE.md section 6).

`SliceExecution` is a mixin of `llmfleet.dispatcher.core.Dispatcher`; the attributes declared
below are the dispatcher state it works on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

from llmfleet.core.clock import Clock
from llmfleet.core.scheduling import MAX_RANK, Assignment, Preempt
from llmfleet.dispatcher.estimates import Reestimator
from llmfleet.dispatcher.metrics import DispatcherMetrics
from llmfleet.dispatcher.model import DispatcherSettings, LiveRequest, TokenEvent
from llmfleet.dispatcher.outcomes import Action, SliceOutcome, after_slice, classify
from llmfleet.dispatcher.pods import PodConnection
from llmfleet.dispatcher.slice_stream import PodFailure, SliceEnd, SliceEvent, SliceTokens

log = logging.getLogger(__name__)

PRIORITY_BOUND = 2**31 - 1  # vLLM's priority travels as a 32-bit int through the sidecar


def engine_priority(client_priority: int, rank: int) -> int:
    """vLLM's priority for a slice: lower starts first in the engine's queue.

    The client's priority (larger is more important) orders first; the policy's rank orders
    requests of equal client priority. Clamped to 32 bits, so extreme client priorities keep
    their order among themselves only up to about +-32,000.
    """
    value = -client_priority * (MAX_RANK + 1) + rank
    return max(-PRIORITY_BOUND, min(PRIORITY_BOUND, value))


@dataclass(eq=False)
class RunningSlice:
    """One slice in flight: where it runs, what it may produce, and what it has so far."""

    req: LiveRequest
    pod: PodConnection
    max_tokens: int
    started_s: float
    slice_id: int = -1
    got: int = 0
    end: SliceEnd | None = None


class SliceExecution:
    clock: Clock
    metrics: DispatcherMetrics
    pods: dict[str, PodConnection]
    queue: dict[str, LiveRequest]
    running: dict[str, LiveRequest]
    migrations: int
    failovers: int
    reestimator: Reestimator | None

    settings: DispatcherSettings

    def kick(self) -> None:
        raise NotImplementedError

    def _finish(self, req: LiveRequest, reason: str) -> None:
        raise NotImplementedError

    def _fail(self, req: LiveRequest, code: str, message: str) -> None:
        raise NotImplementedError

    def _preempt(self, d: Preempt) -> None:
        req = self.running.get(d.request_id)
        if req is None or req.pod_id != d.pod_id or req.slice is None:
            self.metrics.policy_errors.inc()
            return
        req.preempting = True
        self.metrics.preemptions.inc()
        self._stop_slice(req)

    def _assign(self, d: Assignment) -> int:
        req = self.queue.get(d.request_id)
        pod = self.pods.get(d.pod_id)
        now = self.clock.now()
        if req is None or pod is None or not pod.healthy(now):
            self.metrics.policy_errors.inc()
            return 0
        n = min(d.max_tokens, req.remaining)
        if req.pod_id is not None and req.pod_id != pod.pod_id and req.slices > 0:
            req.migrations += 1
            self.migrations += 1
            self.metrics.migrations.inc()
        del self.queue[req.request_id]
        self.running[req.request_id] = req
        req.queue_s += now - req.enqueued_s
        self.metrics.queue_seconds.observe(now - req.enqueued_s)
        req.pod_id = pod.pod_id
        req.assigned_s = now
        req.slice_max = n
        req.touch()
        expected_left = max(1.0, min(float(n), req.state().expected_remaining_tokens()))
        pod.add_inflight(req.request_id, len(req.prompt_ids) + len(req.generated) + n, expected_left)
        pod.start_prefill(req.request_id, len(req.prompt_ids) + len(req.generated))
        pod.remember_prefixes(req.hash_ids)
        running = RunningSlice(req, pod, n, now)
        req.slice = running
        req.progress_s = now  # the dispatcher's ticker fails over a slice that stops moving
        running.slice_id = pod.open_slice(
            req.request_id,
            list(req.prompt_ids),
            list(req.generated),
            n,
            partial(self._on_slice_event, running),
            priority=engine_priority(req.spec.priority, d.rank),
            ignore_eos=req.spec.ignore_eos,
            sampling=req.spec.sampling,
            pending_text_tokens=req.pending_text_tokens,
        )
        return 1

    def _on_slice_event(self, running: RunningSlice, event: SliceEvent) -> None:
        """One event of a slice, as the pod's stream delivers it."""
        req = running.req
        if req.slice is not running:
            return  # the slice was stopped; the stream may still hand over its last event
        req.progress_s = self.clock.now()
        if isinstance(event, SliceTokens):
            ids = event.token_ids[: running.max_tokens - running.got]  # never more than asked for
            if not ids:
                return
            if not running.got:
                running.pod.prefill_done(req.request_id)
                self.kick()  # pacing may have held a request back for this pod
            keep = req.stops.update([event.text, *[""] * (len(ids) - 1)])
            if keep is not None:  # a stop string completed: this token is the last
                ids = ids[:keep]
                running.end = SliceEnd("stop")
            running.got += len(ids)
            req.pending_text_tokens = event.pending_text_tokens
            self._emit(req, ids, ends="stop" if keep is not None or event.ends else None)
            if keep is not None:
                self._stop_slice(req)  # aborts the engine's work
        elif isinstance(event, PodFailure):
            self._close_slice(running, event)
        else:
            running.end = event
            self._close_slice(running, None)

    def _stop_slice(self, req: LiveRequest) -> None:
        """Stop a request's slice now (a cancel, a deadline, a preemption, a stalled pod): the
        sidecar aborts the engine's work, and the slice is over with what it produced."""
        running = req.slice
        if running is not None:
            running.pod.slices.cancel(running.slice_id)
            self._close_slice(running, None)

    def _close_slice(self, running: RunningSlice, failure: PodFailure | None) -> None:
        req, pod = running.req, running.pod
        if req.slice is not running:
            return
        req.slice = None
        if req.stalled and failure is None:
            failure = PodFailure(f"no progress from {pod.pod_id} for {self.settings.slice_progress_timeout_s:g} s")
        req.stalled = False
        pod.remove_inflight(req.request_id)
        elapsed = self.clock.now() - running.started_s
        self.metrics.slice_seconds.observe(elapsed)
        if running.got:
            pod.seconds_per_token = 0.8 * pod.seconds_per_token + 0.2 * (elapsed / running.got)
        self._after_slice(req, pod, running.got, running.end, failure)

    def _cancel_stalled(self) -> None:
        """Cancel every slice that has produced nothing for `slice_progress_timeout_s` (a hung pod:
        SIGSTOP, a wedged engine), so that it fails over and resumes elsewhere. Called each tick."""
        now, limit = self.clock.now(), self.settings.slice_progress_timeout_s
        stalled = [r for r in self.running.values() if r.slice is not None and now - r.progress_s >= limit]
        for req in stalled:  # stopping one re-queues it: not while iterating `running`
            log.warning("request %s: no progress on %s for %.0f s; resuming elsewhere", req.request_id, req.pod_id, limit)
            req.stalled = True
            self._stop_slice(req)

    def _emit(self, req: LiveRequest, ids: tuple[int, ...], ends: str | None = None) -> None:
        """Stream tokens to the client. `ends`: the finish reason, when these end the generation;
        the resume state carries it, so a client resuming right after them is told it is over."""
        if req.done:
            return
        if req.first_token_s is None:
            req.first_token_s = self.clock.now()
            self.metrics.ttft_seconds.observe(req.first_token_s - req.arrival_s)
        req.generated.extend(ids)
        self.metrics.tokens.inc(len(ids))
        # Text that might begin a stop string is held back until it cannot (or the request ends).
        text = req.stops.next_text(finished=False)
        if ends is None and req.remaining <= 0:
            ends = "length"
        req.events.put_nowait(TokenEvent(ids, text, req.resume_state(ends)))

    def _after_slice(
        self, req: LiveRequest, pod: PodConnection, got: int, end: SliceEnd | None, failure: PodFailure | None
    ) -> None:
        if req.done:
            return
        if got:
            req.slices += 1
        outcome = classify(end, failure, req.remaining, req.preempting)
        req.preempting = False
        if outcome is SliceOutcome.POD_FAILED:
            req.failures += 1
        decision = after_slice(outcome, req.failures, self.settings.max_failures)
        self.metrics.slice_outcome(outcome.value).inc()
        if decision.pod_draining:
            pod.draining = True
        if decision.pod_cooldown:
            pod.cooldown_until = self.clock.now() + self.settings.pod_cooldown_s
        reason = str(failure) if failure else (end.error if end else "slice stream ended without a result")
        if decision.action is Action.FINISH:
            self._finish(req, decision.finish_reason)
        elif decision.action is Action.REQUEUE:
            self._requeue(req)
        elif decision.action is Action.FAIL:
            message = {
                "INVALID_ARGUMENT": f"the engine rejected the request: {reason}",
                "UNAVAILABLE": f"gave up after {req.failures} failed attempts; last: {reason}",
            }.get(decision.code, f"the engine failed the request and retrying cannot help: {reason}")
            self._fail(req, decision.code, message)
        else:  # a failed attempt: re-run elsewhere from the tokens already streamed
            log.warning("request %s: slice on %s failed (%s); resuming elsewhere", req.request_id, pod.pod_id, reason)
            req.failovers += 1
            self.failovers += 1
            self.metrics.failovers.inc()
            self._requeue(req, keep_pod=False)

    def _requeue(self, req: LiveRequest, keep_pod: bool = True) -> None:
        self.running.pop(req.request_id, None)
        if self.reestimator is not None:  # a slice boundary: what is left, given the text so far?
            self.reestimator.request(req)
        if not keep_pod:
            req.pod_id = None
        req.enqueued_s = self.clock.now()
        req.assigned_s = None
        req.slice_max = None
        req.touch()
        self.queue[req.request_id] = req
        self.kick()
