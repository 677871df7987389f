"""Admission: what the live dispatcher checks before a request joins its queue.

The backlog bound (with a retry hint), the pods' limits (context, KV block, vocabulary) and the
prompt's size against them, and tokenizing text on some pod. `Dispatcher` mixes this in, as it
does `SliceExecution`; every check raises one of the dispatcher's domain errors, which the gRPC
and HTTP fronts map to status codes.
"""

from __future__ import annotations

import collections

from llmfleet.core.clock import Clock
from llmfleet.dispatcher.metrics import DispatcherMetrics
from llmfleet.dispatcher.model import (
    DispatcherSettings,
    InvalidRequest,
    LiveRequest,
    NoEngine,
    Overloaded,
    PodLimits,
)
from llmfleet.dispatcher.pods import PodConnection
from llmfleet.dispatcher.slice_stream import PodFailure

MAX_CHARS_PER_TOKEN = 32


class Admission:
    clock: Clock
    metrics: DispatcherMetrics
    settings: DispatcherSettings
    pods: dict[str, PodConnection]
    queue: dict[str, LiveRequest]
    running: dict[str, LiveRequest]
    recent_e2e: collections.deque[float]
    rejected: int
    closing: bool
    _admitting: int
    _rr: int
    _no_pods_since: float | None
    _limits: tuple[int, PodLimits] | None

    def healthy_pods(self) -> list[PodConnection]:
        now = self.clock.now()
        return [p for p in self.pods.values() if p.healthy(now)]

    def _slots(self) -> int:
        return sum(p.max_num_seqs for p in self.healthy_pods())

    def backlog(self) -> int:
        """Requests beyond what the healthy pods can run at once, wherever they wait (in the
        dispatcher queue or inside engines). A burst that the pods can start right away is not
        backlog even while it sits in the queue for the next scheduling round."""
        return max(0, len(self.queue) + self._admitting + len(self.running) - self._slots())

    def retry_after_s(self) -> float:
        per_request = sum(self.recent_e2e) / len(self.recent_e2e) if self.recent_e2e else 1.0
        slots = max(1, self._slots())
        return min(30.0, max(0.05, per_request * (1 + self.backlog() - self.settings.max_queue) / slots))

    def _check_capacity(self) -> None:
        if self.closing:
            raise NoEngine("the dispatcher is shutting down")
        since = self._no_pods_since
        if since is not None and self.clock.now() - since >= self.settings.unplaceable_timeout_s:
            raise NoEngine(f"no healthy engine for {self.clock.now() - since:.0f} s; is any sidecar up?")
        # The backlog never exceeds what is admitted, so below the bound the healthy pods' slots
        # need not be counted: this runs twice per request, and counting them scans every pod.
        admitted = len(self.queue) + self._admitting + len(self.running)
        if admitted >= self.settings.max_queue and self.backlog() >= self.settings.max_queue:
            self.rejected += 1
            self.metrics.rejected.inc()
            hint = self.retry_after_s()
            raise Overloaded(
                f"queue full ({self.settings.max_queue} requests waiting); retry in about {hint * 1000:.0f} ms",
                retry_after_s=hint,
            )

    async def _tokenize(self, text: str, messages: tuple[tuple[str, str], ...] = ()) -> tuple[list[int], int]:
        pods = self.healthy_pods() or [p for p in self.pods.values() if p.connected]
        if not pods:
            raise NoEngine("no healthy engine to tokenize the prompt; is any sidecar up?")
        self._rr += 1
        errors = []
        for i in range(len(pods)):
            pod = pods[(self._rr + i) % len(pods)]
            try:
                return await pod.tokenize(text, messages=messages)
            except ValueError as exc:
                raise InvalidRequest(f"the engine could not tokenize the prompt: {exc}") from exc
            except PodFailure as exc:
                errors.append(str(exc))
        raise NoEngine("no engine could tokenize the prompt: " + "; ".join(errors))

    def check_prompt_size(self, chars: int = 0, tokens: int = 0) -> None:
        """Refuse a prompt that cannot fit the context before it is tokenized or copied: a few MB
        of text become tens of MB of token-id lists, and many at once exhaust memory. A token is
        at most MAX_CHARS_PER_TOKEN characters here, far above what real text reaches."""
        limit = self.context_limit()
        if not limit:
            return
        if tokens >= limit:
            raise InvalidRequest(f"prompt is {tokens} tokens long but the model's context is {limit} tokens; shorten the prompt")
        if chars > limit * MAX_CHARS_PER_TOKEN:
            raise InvalidRequest(
                f"prompt is {chars} characters long; the model's context of {limit} tokens cannot hold it "
                f"(at most {limit * MAX_CHARS_PER_TOKEN} characters are tokenized); shorten the prompt"
            )

    def _check_vocabulary(self, prompt: list[int]) -> None:
        """Refuse token ids the model does not have: vLLM answers those with a 500, which would
        otherwise be retried on every pod and cool each one down (one bad client slowing all)."""
        vocab = self.pod_limits().vocab_size
        if vocab and max(prompt) >= vocab:
            bad = next(t for t in prompt if t >= vocab)
            raise InvalidRequest(f"token id {bad} is outside the model's vocabulary (ids 0 to {vocab - 1})")

    def pod_limits(self) -> PodLimits:
        """The smallest context, block and vocabulary the pods report. Every request is checked
        against them, several times, so they are kept until a pod joins or leaves or one of
        them changes (`PodConnection.limits_version`) rather than counted over every pod."""
        key = PodConnection.limits_version
        if self._limits is None or self._limits[0] != key:
            pods = self.pods.values()
            self._limits = (key, PodLimits(
                max_model_len=min((p.max_model_len for p in pods if p.max_model_len > 0), default=0),
                block_size=min((p.block_size for p in pods), default=128) or 128,
                vocab_size=min((p.vocab_size for p in pods if p.vocab_size > 0), default=0),
            ))
        return self._limits[1]

    def context_limit(self, known: int = 0) -> int:
        """The smallest context length the pods report (with `known`, one just learned); 0: none yet."""
        limit = self.pod_limits().max_model_len
        if known:
            return min(limit, known) if limit else known
        return limit
