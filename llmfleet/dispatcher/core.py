"""The live dispatcher's mechanism: it drives a scheduling policy exactly as
`llmfleet.core.scheduling` describes, with real pods behind sidecars.

At every scheduling point (arrival, slice end, load report, pod change, a periodic tick) it builds
a `SchedulerView`, asks `policy.decide(view)` and applies the decisions: an Assignment starts a
slice on a pod; a Preempt cancels a running slice and re-queues the request with its tokens kept.

Tokens reach the client as the slice produces them, and each one is appended to the request's
`generated` list at the same moment. A slice that breaks (sidecar killed, engine error, drain
hand-back) therefore resumes from exactly the tokens the client already has: nothing is lost and
nothing is sent twice. Requests end only by finishing, by a client cancel or deadline, or by a
clear error (bad input, or `max_failures` failed attempts in a row).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from dataclasses import replace

from llmfleet.core.clock import Clock
from llmfleet.core.prediction import LengthEstimate, LengthPredictor, PredictionInput, exact_estimate
from llmfleet.core.scheduling import Assignment, Deferred, Policy, Preempt, SchedulerView
from llmfleet.dispatcher.admission import Admission
from llmfleet.dispatcher.estimates import Reestimator, forget_estimate, learn_from, learns, reestimates
from llmfleet.dispatcher.metrics import DispatcherMetrics
from llmfleet.dispatcher.model import (
    DispatcherSettings,
    FailEvent,
    FinishEvent,
    GenerateSpec,
    InvalidRequest,
    LiveRequest,
    PodLimits,
    TokenEvent,
    prefix_hashes,
)
from llmfleet.dispatcher.pods import PodConnection
from llmfleet.dispatcher.slices import SliceExecution
from llmfleet.serving import Token

log = logging.getLogger(__name__)


class Dispatcher(Admission, SliceExecution):
    """Queue, pods and the policy loop. Use `submit()` then read `request.events`."""

    def __init__(
        self,
        policy: Policy,
        *,
        clock: Clock,
        settings: DispatcherSettings | None = None,
        predictor: LengthPredictor | None = None,
        metrics: DispatcherMetrics | None = None,
        channel_credentials: object | None = None,
        sidecar_token: Token | None = None,
        sidecar_tls_server_name: str | None = None,
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.settings = settings or DispatcherSettings()
        if predictor is None:
            from llmfleet.ranker.baseline import PromptLengthPredictor

            predictor = PromptLengthPredictor()
        self.predictor = predictor
        self.metrics = metrics or DispatcherMetrics()
        # An online ranker may learn to re-estimate later: its re-estimator waits until it can.
        self.reestimator = Reestimator(predictor, self.metrics, self.kick) if reestimates(predictor) or learns(predictor) else None
        self._credentials = channel_credentials
        self._sidecar_token = sidecar_token
        self._tls_server_name = sidecar_tls_server_name
        self.pods: dict[str, PodConnection] = {}
        self.queue: dict[str, LiveRequest] = {}  # insertion order = enqueue order
        self.running: dict[str, LiveRequest] = {}
        # Read when Prometheus scrapes: always exact, and nothing to update on a request's path.
        self.metrics.queue_length.set_function(lambda: len(self.queue))
        self.metrics.running.set_function(lambda: len(self.running))
        self._seq = 0
        # Ids for requests that came without one: unique here by the sequence number, and
        # across dispatchers (which may share engines) by a random prefix. A uuid4 per request
        # read the OS's randomness every time.
        self._id_prefix = uuid.uuid4().hex[:16] + "-"
        self._admitting = 0
        # The scheduling round asked for by kick(), as a loop callback (None: none pending).
        self._round: asyncio.Handle | None = None
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        self.recent_outputs: collections.deque[int] = collections.deque(maxlen=1000)
        self.recent_e2e: collections.deque[float] = collections.deque(maxlen=200)
        self.completed = 0
        self.failed = 0
        self.rejected = 0
        self.migrations = 0
        self.failovers = 0
        self.closing = False
        self._rr = 0
        self._no_pods_since: float | None = None  # when the last healthy pod went away
        # pod_limits(), with the PodConnection.limits_version it was counted at (None: count again).
        self._limits: tuple[int, PodLimits] | None = None

    # ----- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._ticker(), name="dispatcher-tick")]
        self._started = True
        self.kick()  # for whatever was queued before the start (a round with nothing queued is a no-op)
        run_learner = getattr(self.predictor, "run", None)  # an OnlineRanker retrains in the background
        if run_learner is not None and learns(self.predictor):
            self._tasks.append(asyncio.create_task(run_learner(), name="dispatcher-online-ranker"))
        if self.reestimator is not None:
            self._tasks.append(asyncio.create_task(self.reestimator.run(), name="dispatcher-reestimates"))

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop admitting; let live requests finish for `grace_s`; fail the rest UNAVAILABLE."""
        self.closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._until_empty(), timeout=grace_s)
        for req in [*self.queue.values(), *self.running.values()]:
            self._fail(req, "UNAVAILABLE", "the dispatcher is shutting down")  # stops its slice
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._started = False
        if self._round is not None:
            self._round.cancel()
            self._round = None
        for pod in list(self.pods.values()):
            await pod.close()
        self.pods.clear()
        self._limits = None

    async def _until_empty(self) -> None:
        while self.queue or self.running:
            await asyncio.sleep(0.05)

    # ----- pods ---------------------------------------------------------------------------------
    async def set_pods(self, pods: dict[str, str]) -> None:
        """Make the pod set exactly `pods` (pod id -> sidecar address); used by discovery."""
        for pod_id in [p for p in self.pods if p not in pods or self.pods[p].address != pods[p]]:
            pod = self.pods.pop(pod_id)
            self._limits = None
            self.metrics.forget_pod(pod_id)
            log.info("pod %s (%s) left", pod_id, pod.address)
            # Its running slices fail over when their calls break; closing the channel breaks them.
            await pod.close()
        for pod_id, address in pods.items():
            if pod_id not in self.pods:
                log.info("pod %s joined at %s", pod_id, address)
                pod = PodConnection(
                    pod_id,
                    address,
                    clock=self.clock,
                    on_change=self.kick,
                    credentials=self._credentials,  # type: ignore[arg-type]
                    load_interval_ms=self.settings.load_interval_ms,
                    stale_after_s=self.settings.load_report_timeout_s,
                    token=self._sidecar_token,
                    tls_server_name=self._tls_server_name,
                )
                self.pods[pod_id] = pod
                self._limits = None
                pod.start()
        self._update_pod_gauges()
        self.kick()

    async def submit(self, spec: GenerateSpec) -> LiveRequest:
        """Admit a request (or raise InvalidRequest / Overloaded / NoEngine)."""
        spec.validate()
        rid = spec.request_id or f"{self._id_prefix}{self._seq:x}"
        if rid in self.queue or rid in self.running:
            raise InvalidRequest(f"request_id {rid!r} is already in use", duplicate=True)
        self._check_capacity()
        self.check_prompt_size(len(spec.prompt_text or "") + sum(len(c) for _, c in spec.prompt_messages or ()))
        if spec.resume is not None and spec.resume.token_ids:
            self._check_vocabulary(list(spec.resume.token_ids))
        self._admitting += 1
        try:
            limit_hint = 0
            if spec.prompt_ids is not None:
                prompt = list(spec.prompt_ids)
                self._check_vocabulary(prompt)
            else:
                prompt, limit_hint = await self._tokenize(spec.prompt_text or "", spec.prompt_messages or ())
                if not prompt:
                    raise InvalidRequest("the prompt tokenizes to no tokens")
        finally:
            self._admitting -= 1
        limit = self.context_limit(limit_hint)
        n = len(prompt)
        if limit and n >= limit:
            raise InvalidRequest(
                f"prompt is {n} tokens long but the model's context is {limit} tokens; shorten the prompt"
            )
        if spec.to_context and limit:
            spec = replace(spec, max_tokens=limit - n)
        if limit and n + spec.max_tokens > limit:
            raise InvalidRequest(
                f"prompt ({n} tokens) + max_tokens ({spec.max_tokens}) = {n + spec.max_tokens} exceeds the model's "
                f"context of {limit} tokens; set max_tokens to at most {limit - n}"
            )
        if rid in self.queue or rid in self.running:
            raise InvalidRequest(f"request_id {rid!r} is already in use", duplicate=True)
        self._check_capacity()
        now = self.clock.now()
        block = self.pod_limits().block_size
        req = LiveRequest(rid, self._seq, spec, prompt, now, prefix_hashes(prompt, block))
        self._seq += 1
        if spec.resume is not None and (spec.resume.state.finish_reason or req.remaining <= 0):
            # The client has every token already (its dispatcher died before the finish message).
            self._finish(req, spec.resume.state.finish_reason or "length")
            return req
        req.estimate = self._estimate(req)
        self.queue[rid] = req
        if spec.deadline_s is not None:
            seconds = spec.deadline_s
            req.deadline = self.clock.call_later(seconds, lambda: self._deadline(req, seconds))
        self.kick()
        return req

    def _estimate(self, req: LiveRequest) -> LengthEstimate | None:
        if req.spec.ignore_eos:
            return exact_estimate(req.max_tokens)  # the length is fixed: nothing to predict
        item = PredictionInput(req.request_id, len(req.prompt_ids), req.spec.prompt_text)
        try:
            return self.predictor.predict([item])[0]
        except Exception:  # a broken ranker must not lose requests
            log.exception("length predictor failed; scheduling without an estimate")
            return None

    def _deadline(self, req: LiveRequest, seconds: float) -> None:
        if not req.done:
            self._fail(req, "DEADLINE_EXCEEDED", f"deadline of {seconds * 1000:.0f} ms passed after {len(req.generated)} tokens")

    # ----- ending requests ----------------------------------------------------------------------
    def cancel(self, request_id: str, reason: str = "cancelled by the client") -> bool:
        req = self.queue.get(request_id) or self.running.get(request_id)
        if req is None:
            return False
        self._fail(req, "CANCELLED", reason)
        return True

    def _end(self, req: LiveRequest) -> None:
        req.done = True
        self.queue.pop(req.request_id, None)
        self.running.pop(req.request_id, None)
        self._stop_slice(req)  # the sidecar aborts the engine work
        if req.deadline is not None:
            req.deadline.cancel()
        self.kick()

    def _fail(self, req: LiveRequest, code: str, message: str) -> None:
        if req.done:
            return
        self._end(req)
        self.failed += code not in ("CANCELLED",)
        self.metrics.request_outcome(code.lower()).inc()
        req.events.put_nowait(FailEvent(code, message))
        forget_estimate(self.predictor, req)  # its true length will never be known

    def _finish(self, req: LiveRequest, reason: str) -> None:
        if req.done:
            return
        self._end(req)
        now = self.clock.now()
        usage = req.usage(now)
        self.completed += 1
        self.recent_outputs.append(len(req.generated))
        self.recent_e2e.append(usage.e2e_s)
        self.metrics.request_outcome("finished").inc()
        self.metrics.e2e_seconds.observe(usage.e2e_s)
        rest = req.stops.next_text(finished=True)  # what was held back for stop strings
        if rest:
            req.events.put_nowait(TokenEvent((), rest, req.resume_state(reason)))
        req.events.put_nowait(FinishEvent(reason, usage))
        learn_from(self.predictor, self.metrics, req, reason)

    # ----- scheduling ---------------------------------------------------------------------------
    def kick(self) -> None:
        """Ask for a scheduling round. It runs as a callback once the event loop has run what is
        ready now, so the arrivals and slice ends of one turn of the loop share one decision. A
        callback rather than a task woken through an Event: under load there is a round for
        almost every assignment, and a callback is the cheaper of the two for the loop."""
        if self._started and self._round is None:
            self._round = asyncio.get_running_loop().call_soon(self._scheduling_round)

    async def _ticker(self) -> None:
        while True:
            await self.clock.sleep(self.settings.tick_s)
            self._update_pod_gauges()
            self._fail_unplaceable()
            self._cancel_stalled()
            if self.queue:
                self.kick()

    def _fail_unplaceable(self) -> None:
        """With no healthy pod for `unplaceable_timeout_s`, fail what waits for one (UNAVAILABLE)."""
        now = self.clock.now()
        if self.healthy_pods():
            self._no_pods_since = None
            return
        if self._no_pods_since is None:
            self._no_pods_since = now
        limit = self.settings.unplaceable_timeout_s
        for req in list(self.queue.values()):
            if now - max(self._no_pods_since, req.enqueued_s) >= limit:
                self._fail(req, "UNAVAILABLE", f"no healthy engine for {limit:g} s; is any sidecar up?")

    def _scheduling_round(self) -> None:
        self._round = None
        if self.queue:  # nothing queued, nothing to decide (see Policy)
            try:
                self.schedule_once()
            except Exception:  # a policy bug must not stop the dispatcher
                log.exception("scheduling round failed")

    def view(self) -> SchedulerView:
        now = self.clock.now()
        return SchedulerView(
            now=now,
            queue=tuple(r.state() for r in self.queue.values()),
            # Built only if the policy reads them (see Deferred): most never do.
            running=Deferred(lambda: tuple(r.state() for r in self.running.values())),
            pods=tuple(p.state(now) for p in self.pods.values()),
            recent_output_tokens=Deferred(lambda: tuple(self.recent_outputs)),
            completed=self.completed,
            admitted=self._seq,
        )

    def schedule_once(self) -> int:
        """One scheduling point: decide and apply. Returns the number of slices started."""
        started = self.clock.now()
        view = self.view()
        try:
            decisions = self.policy.decide(view)
        except Exception as exc:  # a policy bug fails the requests it chokes on, not the dispatcher
            self._isolate_policy_failure(view, exc)
            return 0
        seen: set[str] = set()
        launched = 0
        for d in decisions:
            if isinstance(d, Preempt):
                self._preempt(d)
            elif isinstance(d, Assignment):
                if d.request_id in seen:
                    self.metrics.policy_errors.inc()
                    continue
                seen.add(d.request_id)
                launched += self._assign(d)
        self.metrics.decision_seconds.observe(max(0.0, self.clock.now() - started))
        return launched

    def _isolate_policy_failure(self, view: SchedulerView, exc: Exception) -> None:
        """`decide()` raised: find the queued requests it raises on, alone, and fail them.

        Each queued request is offered to the policy in a view of its own; those it still raises
        on end with INTERNAL and the policy's error, and the rest stay queued for the next
        scheduling point. When no single request reproduces the error, every queued request is
        failed, so nothing waits forever on a policy that cannot decide.
        """
        self.metrics.policy_failures.inc()
        log.error("policy %s raised; isolating the requests concerned: %r", getattr(self.policy, "name", "?"), exc)
        culprits: list[tuple[str, Exception]] = []
        for state in view.queue:
            try:
                self.policy.decide(replace(view, queue=(state,)))
            except Exception as alone:
                culprits.append((state.request_id, alone))
        if not culprits:
            culprits = [(s.request_id, exc) for s in view.queue]
        for request_id, error in culprits:
            req = self.queue.get(request_id)
            if req is not None:
                self._fail(req, "INTERNAL", f"the scheduling policy failed on this request: {error}")

    # ----- observability ------------------------------------------------------------------------
    def _update_pod_gauges(self) -> None:
        now = self.clock.now()
        m = self.metrics
        for pod in self.pods.values():
            m.pod_inflight.labels(pod.pod_id).set(len(pod.inflight))
            m.pod_running.labels(pod.pod_id).set(pod.engine_running)
            m.pod_waiting.labels(pod.pod_id).set(pod.engine_waiting)
            m.pod_kv.labels(pod.pod_id).set(pod.kv_cache_usage)
            m.pod_healthy.labels(pod.pod_id).set(1 if pod.healthy(now) else 0)
