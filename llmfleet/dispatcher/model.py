"""Domain types of the live dispatcher: what a client asks for, what it gets back, and how a
request lives while the dispatcher schedules it in slices. No gRPC types here: the servicer
converts protos to these at the boundary."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmfleet.core.clock import Timer
from llmfleet.core.prediction import LengthEstimate
from llmfleet.core.sampling import SamplingParams
from llmfleet.core.scheduling import RequestState
from llmfleet.engine.stops import StopChecker

if TYPE_CHECKING:
    from llmfleet.dispatcher.slices import RunningSlice

MAX_REQUEST_ID_LEN = 256
PRIORITY_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class DispatcherSettings:
    """The mechanism's knobs. Scheduling settings (policy, slices, guards, queue bound) are the
    `SchedulingConfig`'s; `max_queue` is copied from it by `serve_dispatcher`."""

    max_queue: int = 4096  # requests waiting beyond what the pods can run at once
    max_failures: int = 6  # failed attempts of one request before it is given up (UNAVAILABLE)
    pod_cooldown_s: float = 1.0  # a pod that failed a slice takes no new one for this long
    tick_s: float = 0.25  # periodic scheduling point (starvation guards, waiting policies)
    # While no pod is healthy, a queued request fails with UNAVAILABLE after this long (and new
    # ones are refused at once once it has passed): a request never waits forever for an engine.
    unplaceable_timeout_s: float = 30.0
    # The largest request accepted (gRPC message or HTTP body): 2 MiB holds a 500k-token prompt,
    # and bounds what many concurrent oversized requests cost before they are refused.
    max_request_bytes: int = 2 << 20
    # A slice that yields no token for this long is treated as a pod failure: it resumes elsewhere.
    slice_progress_timeout_s: float = 30.0
    # A pod whose load reports stop for this long takes no new work (a hung sidecar never errors).
    load_report_timeout_s: float = 3.0
    load_interval_ms: int = 250


class InvalidRequest(ValueError):
    """The request itself is wrong (maps to INVALID_ARGUMENT, or ALREADY_EXISTS for a duplicate id)."""

    def __init__(self, message: str, *, duplicate: bool = False) -> None:
        super().__init__(message)
        self.duplicate = duplicate


class Overloaded(Exception):
    """The bounded queue is full (maps to RESOURCE_EXHAUSTED with a retry hint)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NoEngine(Exception):
    """No engine can serve the request right now (maps to UNAVAILABLE)."""


@dataclass(frozen=True)
class ResumeState:
    """Where a request's text stream stands after its latest token message (see `Resume`)."""

    pending_text_tokens: int = 0  # trailing tokens whose text the engine side still holds
    held_text: str = ""  # text held back because it may begin a stop string
    finish_reason: str = ""  # the generation ended with the last token sent ("stop" or "length")


@dataclass(frozen=True)
class Resume:
    """A generation continued from what its client already received (a dispatcher died under it)."""

    token_ids: tuple[int, ...]
    text: str = ""
    state: ResumeState = ResumeState()

    def validate(self, max_tokens: int) -> None:
        if any(t < 0 for t in self.token_ids):
            raise InvalidRequest("resume token ids must be non-negative")
        if len(self.token_ids) > max_tokens:
            raise InvalidRequest(f"resume has {len(self.token_ids)} tokens, more than max_tokens {max_tokens}")
        if self.state.finish_reason not in ("", "stop", "length"):
            raise InvalidRequest(f"resume state's finish_reason must be 'stop' or 'length', got {self.state.finish_reason!r}")
        if not 0 <= self.state.pending_text_tokens <= len(self.token_ids):
            raise InvalidRequest("resume state's pending_text_tokens must be within the resumed tokens")


@dataclass(frozen=True)
class GenerateSpec:
    """One client request, validated by `validate()`."""

    max_tokens: int
    prompt_text: str | None = None
    prompt_ids: tuple[int, ...] | None = None
    prompt_messages: tuple[tuple[str, str], ...] | None = None  # (role, content), via the chat template
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str | None = None
    deadline_s: float | None = None  # relative to arrival
    priority: int = 0  # larger is more important
    tenant: str = ""
    ignore_eos: bool = False
    # OpenAI chat without max_tokens: generate up to the end of the context (max_tokens is the
    # fallback while no pod has reported its context length).
    to_context: bool = False
    resume: Resume | None = None

    def validate(self) -> None:
        if sum(p is not None for p in (self.prompt_text, self.prompt_ids, self.prompt_messages)) != 1:
            raise InvalidRequest("give the prompt either as text, as token_ids or as chat messages (exactly one)")
        if self.prompt_messages is not None and not self.prompt_messages:
            raise InvalidRequest("messages is empty")
        if self.prompt_text is not None and not self.prompt_text:
            raise InvalidRequest("prompt text is empty")
        if self.prompt_ids is not None:
            if not self.prompt_ids:
                raise InvalidRequest("prompt token_ids is empty")
            bad = [t for t in self.prompt_ids if t < 0]
            if bad:
                raise InvalidRequest(f"prompt token ids must be non-negative, got {bad[0]}")
        if self.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be at least 1, got {self.max_tokens}")
        s = self.sampling
        if s.temperature < 0:
            raise InvalidRequest(f"temperature must be >= 0, got {s.temperature}")
        if not 0 < s.top_p <= 1:
            raise InvalidRequest(f"top_p must be in (0, 1], got {s.top_p}")
        if s.top_k is not None and s.top_k < 1:
            raise InvalidRequest(f"top_k must be >= 1 (or unset), got {s.top_k}")
        if any(t < 0 for t in s.stop_token_ids):
            raise InvalidRequest("stop_token_ids must be non-negative token ids")
        if any(not stop for stop in s.stop):
            raise InvalidRequest("stop strings must not be empty")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise InvalidRequest(f"deadline must be positive, got {self.deadline_s * 1000:.0f} ms")
        if not -PRIORITY_LIMIT <= self.priority <= PRIORITY_LIMIT:
            # vLLM takes the negated priority as a 32-bit int: -2**31 would not survive the negation.
            raise InvalidRequest(f"priority must be within +-{PRIORITY_LIMIT}, got {self.priority}")
        if self.request_id is not None and not 0 < len(self.request_id) <= MAX_REQUEST_ID_LEN:
            raise InvalidRequest(f"request_id must have 1 to {MAX_REQUEST_ID_LEN} characters")
        if self.resume is not None:
            if self.to_context:
                raise InvalidRequest("resume needs an explicit max_tokens")
            self.resume.validate(self.max_tokens)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    slices: int
    migrations: int
    failovers: int
    queue_s: float
    ttft_s: float
    e2e_s: float
    resumed_tokens: int = 0  # of completion_tokens, those the client already had (Resume)


@dataclass(frozen=True)
class TokenEvent:
    token_ids: tuple[int, ...]
    text: str
    resume_state: ResumeState | None = None  # after these tokens: what a client passes back to resume


@dataclass(frozen=True)
class FinishEvent:
    finish_reason: str  # "length" or "stop"
    usage: Usage


@dataclass(frozen=True)
class FailEvent:
    code: str  # a grpc.StatusCode name: CANCELLED, DEADLINE_EXCEEDED, INVALID_ARGUMENT, UNAVAILABLE
    message: str


OutputEvent = TokenEvent | FinishEvent | FailEvent


def prefix_hashes(token_ids: tuple[int, ...] | list[int], block_tokens: int) -> tuple[int, ...]:
    """Chained hashes of the prompt's full blocks, like vLLM's prefix-cache block hashes."""
    out: list[int] = []
    prev = b""
    for start in range(0, len(token_ids) - block_tokens + 1, block_tokens):
        block = ",".join(map(str, token_ids[start : start + block_tokens])).encode()
        digest = hashlib.blake2b(prev + block, digest_size=8).digest()
        out.append(int.from_bytes(digest, "big"))
        prev = digest
    return tuple(out)


@dataclass(frozen=True, slots=True)
class PodLimits:
    """What every request must fit, over all pods: 0 where no pod has said."""

    max_model_len: int
    block_size: int
    vocab_size: int


class LiveRequest:
    """A request inside the dispatcher: its tokens so far and the stream back to its client."""

    def __init__(
        self, request_id: str, seq: int, spec: GenerateSpec, prompt_ids: list[int], arrival_s: float, hash_ids: tuple[int, ...]
    ) -> None:
        self.request_id = request_id
        self.seq = seq
        self.spec = spec
        self.prompt_ids = prompt_ids
        self.generated: list[int] = []
        self.arrival_s = arrival_s
        self.enqueued_s = arrival_s
        self.assigned_s: float | None = None
        self.first_token_s: float | None = None
        self.queue_s = 0.0
        self.hash_ids = hash_ids
        self.estimate: LengthEstimate | None = None
        self.pod_id: str | None = None  # pod running it now, or the last one that did
        self.slice_max: int | None = None
        self.slices = 0
        self.migrations = 0
        self.failovers = 0
        self.failures = 0
        self.preempting = False
        self.done = False
        self.events: asyncio.Queue[OutputEvent] = asyncio.Queue()
        # Text as the client sees it, checked for stop strings across slices (vLLM's rules).
        s = spec.sampling
        self.stops = StopChecker(s.stop, int(s.extra.get("min_tokens", 0) or 0), s.include_stop_str_in_output)
        self.pending_text_tokens = 0  # generated tokens whose text the sidecar still holds back
        self.progress_s = arrival_s  # when its current slice last produced something
        self.stalled = False  # its current slice was cancelled for making no progress
        self.slice: RunningSlice | None = None  # its slice in flight, if any
        self.deadline: Timer | None = None  # fails the request when it fires
        self._state: RequestState | None = None
        self.resumed_tokens = 0
        if spec.resume is not None:  # carry on exactly where the client's last message left off
            r = spec.resume
            self.generated = list(r.token_ids)
            self.resumed_tokens = len(r.token_ids)
            self.pending_text_tokens = r.state.pending_text_tokens
            self.stops.resume(len(r.token_ids), r.text, r.state.held_text)

    def resume_state(self, finish_reason: str | None = None) -> ResumeState:
        return ResumeState(self.pending_text_tokens, self.stops.held, finish_reason or "")

    @property
    def max_tokens(self) -> int:
        return self.spec.max_tokens

    @property
    def remaining(self) -> int:
        return self.spec.max_tokens - len(self.generated)

    def touch(self) -> None:
        """Forget the cached snapshot after a change the policy may care about."""
        self._state = None

    def state(self) -> RequestState:
        if self._state is None:
            self._state = RequestState(
                request_id=self.request_id,
                seq=self.seq,
                arrival_s=self.arrival_s,
                prompt_tokens=len(self.prompt_ids),
                generated_tokens=len(self.generated),
                max_output_tokens=self.spec.max_tokens,
                estimate=self.estimate,
                priority=self.spec.priority,
                hash_ids=self.hash_ids,
                pod_id=self.pod_id,
                enqueued_s=self.enqueued_s,
                assigned_s=self.assigned_s,
                slice_max_tokens=self.slice_max,
                slices=self.slices,
            )
        return self._state

    def usage(self, now: float) -> Usage:
        return Usage(
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=len(self.generated),
            slices=self.slices,
            migrations=self.migrations,
            failovers=self.failovers,
            queue_s=self.queue_s,
            ttft_s=(self.first_token_s - self.arrival_s) if self.first_token_s is not None else 0.0,
            e2e_s=now - self.arrival_s,
            resumed_tokens=self.resumed_tokens,
        )
