"""The scheduling contract: frozen snapshots in, frozen decisions out.

Every llmfleet policy (``llmfleet.policies``) is a pure object with ONE method::

    decisions: tuple[Decision, ...] = policy.decide(view)

``view`` is a :class:`SchedulerView`, an immutable snapshot built by the *mechanism* (the
trace-driven simulator in ``llmfleet.sim`` today, the live gRPC dispatcher later). A policy
never awaits, never does I/O and never reads a clock: ``view.now`` is the time. The same
policy object therefore runs unchanged under the simulator and the dispatcher.

How a mechanism drives a policy (the dispatcher follows exactly this)
--------------------------------------------------------------------
The mechanism owns a FIFO *queue* of requests waiting at the dispatcher and a set of *pods*
(vLLM engines behind sidecars). At every scheduling point -- a request arrives, a slice or a
request finishes on a pod, a pod sends a load report -- it:

1. Builds a ``SchedulerView``: ``queue`` holds the waiting requests in arrival (enqueue) order,
   ``running`` the requests currently executing on pods, ``pods`` one :class:`PodState` each.
   ``RequestState.estimate`` is the ``LengthEstimate`` the mechanism obtained from its
   ``LengthPredictor`` once, at admission; policies never call a predictor themselves.
2. Calls ``policy.decide(view)`` and applies the returned decisions **in order**:

   * :class:`Preempt` ``(request_id, pod_id)`` -- stop that running request on that pod
     and put it back at the end of the dispatcher queue with its generated tokens kept. Its
     KV is dropped: a later resume re-prefills prompt + generated tokens, minus whatever the
     pod's prefix cache still holds. (There is no swap mode: vLLM's V1 engine cannot swap a
     request's KV to host memory, so a decision to swap would mean something else.)
   * :class:`Assignment` ``(request_id, pod_id, max_tokens)`` -- remove the request from the
     queue and send it to the pod, asking for at most ``max_tokens`` *more* output tokens
     (the prompt sent is the original prompt plus every token generated so far). When the
     pod returns, the request is either finished (EOS or its own output limit) or, if
     ``max_tokens`` ran out first, re-queued with ``generated_tokens`` updated and
     ``pod_id`` set to the pod that ran it (its KV is likely still in that pod's prefix
     cache). Slice-based policies use ``max_tokens = S`` (their configured slice length); continuous-batching
     policies (``fcfs-rr``, ``least-load``, ...) use :data:`ALL_REMAINING`, meaning "run to
     completion". An Assignment whose ``pod_id`` differs from the request's previous
     ``pod_id`` is a *migration*: nothing else is needed, the mechanism simply re-prefills
     on the new pod.

   Decisions about unknown ids, or a second Assignment for the same request in one
   decision batch, are ignored by the mechanism (and counted as policy errors); a request
   with no decision simply stays queued. Requests are never dropped by a policy.
3. Does nothing else: a policy that wants to wait (for a pod to free up, to fill a batch)
   returns no Assignment for that request and is asked again at the next scheduling point.

Filling the view (what policies read, so a mechanism must provide it)
--------------------------------------------------------------------
* ``RequestState.seq`` (admission order; round-robin uses it), ``arrival_s`` (starvation guard
  and aging), ``enqueued_s``, ``generated_tokens`` as of the last slice boundary, ``estimate``,
  ``hash_ids`` when known, ``pod_id`` of the pod that last ran it (affinity, stickiness).
  ``true_output_tokens`` is None outside simulators (only ``oracle-srpt`` needs it).
* ``PodState``: ``max_running`` (the engine's max_num_seqs), ``running``/``waiting`` counts
  including requests the dispatcher has sent but the engine has not yet reported,
  ``kv_capacity_tokens``/``kv_used_tokens``, ``est_remaining_s``/``est_remaining_tokens``
  (work the pod holds, from the requests' estimates), ``cached_prefixes`` (hash ids the
  dispatcher believes the pod caches, e.g. those it routed there recently, as llm-d does),
  the per-token cost hints used by ``alise``, and ``healthy``.
* ``recent_output_tokens`` (output lengths of the last ~1,000 finished requests) and
  ``completed`` (their running count), which ``l4`` partitions by.
* ``admitted``: how many requests were admitted so far (``seq`` numbers them densely from 0);
  ``llmfleet``'s overtake guard counts later arrivals that left the queue with it.

Settings (slice length, guards, length groups) are not in the view: a policy receives them once,
when ``llmfleet.policies.registry.make_policy(config)`` builds it from the one
``llmfleet.core.config.SchedulingConfig``. ``POLICIES`` there lists them with one-line descriptions.

Everything in these types is ids, counts, token numbers and seconds, so decisions can be
logged, replayed, sent over gRPC and compared across mechanisms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, overload

from llmfleet.core.prediction import LengthEstimate

T = TypeVar("T")

# Assignment.max_tokens value meaning "generate until the request finishes".
ALL_REMAINING = 1 << 30

# Assignment.rank spans 0..MAX_RANK, so a client priority can still order requests above it
# within vLLM's 32-bit priority (`llmfleet.dispatcher.slices.engine_priority`).
MAX_RANK = (1 << 16) - 1

# Fallbacks, in one place, for when nothing better is known:
FALLBACK_SLICE_TOKENS = 128  # S for slice-only policies when the config sets no sliceTokens
FALLBACK_OUTPUT_TOKENS = 128.0  # expected output of a request with no length estimate
FALLBACK_S_PER_TOKEN = 0.03  # decode seconds per token of a pod that reports no pace yet


@dataclass(frozen=True, slots=True)
class RequestState:
    """One request as the dispatcher knows it."""

    request_id: str
    seq: int  # admission order, 0, 1, 2, ... (stable across slices; round-robin uses it)
    arrival_s: float
    prompt_tokens: int
    generated_tokens: int = 0  # output tokens produced so far (as of the last slice boundary)
    max_output_tokens: int | None = None  # the client's max_tokens, if any
    true_output_tokens: int | None = None  # known only to simulators; only oracle policies read it
    estimate: LengthEstimate | None = None  # from the LengthPredictor, at admission
    priority: int = 0  # client priority; larger is more important
    hash_ids: tuple[int, ...] = ()  # prefix block hashes of the prompt (e.g. Mooncake's 512-token blocks)
    pod_id: str | None = None  # pod that holds (or last held) its KV; None before its first slice
    enqueued_s: float = 0.0  # when it (re-)entered the dispatcher queue; aging and starvation use it
    assigned_s: float | None = None  # when the running slice was assigned (running requests only)
    slice_max_tokens: int | None = None  # max_tokens of the running slice (running requests only)
    slices: int = 0  # slices completed so far

    @property
    def context_tokens(self) -> int:
        """Tokens whose KV a pod must hold to continue this request."""
        return self.prompt_tokens + self.generated_tokens

    def output_cap(self) -> int | None:
        """Hard upper bound on output tokens, when one is known."""
        caps = [c for c in (self.max_output_tokens, self.true_output_tokens) if c is not None]
        return min(caps) if caps else None

    def expected_output_tokens(self) -> float:
        """Best available point estimate of the total output length."""
        if self.estimate is not None:
            guess = max(self.estimate.expected_tokens, self.generated_tokens + 1.0)
        else:
            guess = float(self.generated_tokens) + FALLBACK_OUTPUT_TOKENS
        if self.max_output_tokens is not None:
            guess = min(guess, float(self.max_output_tokens))
        return guess

    def expected_remaining_tokens(self) -> float:
        return max(1.0, self.expected_output_tokens() - self.generated_tokens)


class Deferred(Sequence[T]):
    """A tuple built the first time it is read. The live dispatcher builds a view for almost
    every assignment, and most policies never read `running` or `recent_output_tokens`:
    building them anyway cost more than the decision itself under a burst (hundreds of running
    requests). Read during decide(), when nothing else runs, it is the same snapshot as a tuple
    built with the view."""

    __slots__ = ("_items", "_make")

    def __init__(self, make: Callable[[], tuple[T, ...]]) -> None:
        self._make: Callable[[], tuple[T, ...]] | None = make
        self._items: tuple[T, ...] = ()

    def _get(self) -> tuple[T, ...]:
        if self._make is not None:
            self._items, self._make = self._make(), None
        return self._items

    @overload
    def __getitem__(self, i: int) -> T: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[T, ...]: ...
    def __getitem__(self, i: int | slice) -> T | tuple[T, ...]:
        return self._get()[i]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self) -> Iterator[T]:
        return iter(self._get())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Deferred):
            other = other._get()
        return self._get() == other

    def __hash__(self) -> int:
        return hash(self._get())

    def __repr__(self) -> str:
        return f"Deferred({self._get()!r})"


@dataclass(frozen=True, slots=True)
class PodState:
    """One engine pod (vLLM behind a sidecar), as of its last load report."""

    pod_id: str
    group: str | None = None  # length group (L4) this pod is configured into, if any
    kv_capacity_tokens: int = 0  # KV cache capacity, in tokens (blocks * block_size)
    kv_used_tokens: int = 0  # KV held by running requests (excludes evictable prefix cache)
    block_size: int = 16
    max_running: int = 256  # the engine's max_num_seqs
    running: int = 0  # requests the engine is decoding or prefilling
    waiting: int = 0  # requests queued inside the engine
    est_remaining_s: float = 0.0  # estimated seconds of work left for what it holds
    est_remaining_tokens: float = 0.0  # estimated output tokens left for what it holds
    pending_prefill_tokens: int = 0  # prompt tokens of what it holds that are not yet prefilled
    # Hash ids believed to be in its prefix cache. Read-only; the live dispatcher passes a view of
    # its own record, which nothing changes while decide() runs.
    cached_prefixes: AbstractSet[int] = frozenset()
    prefix_block_tokens: int = 512  # tokens each hash id stands for
    recompute_s_per_token: float = 0.0  # cost hint: re-prefill seconds per context token
    healthy: bool = True

    # Conditionals rather than max(): routing reads these for every pod in almost every decision.
    @property
    def kv_free_tokens(self) -> int:
        n = self.kv_capacity_tokens - self.kv_used_tokens
        return n if n > 0 else 0

    @property
    def kv_utilization(self) -> float:
        return self.kv_used_tokens / self.kv_capacity_tokens if self.kv_capacity_tokens else 1.0

    @property
    def free_slots(self) -> int:
        """How many more requests the engine can run without queueing them internally."""
        n = self.max_running - self.running - self.waiting
        return n if n > 0 else 0


@dataclass(frozen=True, slots=True)
class SchedulerView:
    """Everything a policy may look at, frozen at one scheduling point."""

    now: float
    queue: tuple[RequestState, ...]  # waiting at the dispatcher, in enqueue order
    running: Sequence[RequestState]  # executing a slice on some pod (a tuple, or Deferred)
    pods: tuple[PodState, ...]
    recent_output_tokens: Sequence[int] = ()  # output lengths of recently finished requests
    completed: int = 0  # requests finished so far (lets policies memoise derived tables)
    # Requests admitted so far: every `RequestState.seq` is below it, and each number below it was
    # given once. A starvation guard counts with it how many later arrivals left the queue first.
    admitted: int = 0

    def pod(self, pod_id: str) -> PodState:
        for p in self.pods:
            if p.pod_id == pod_id:
                return p
        raise KeyError(pod_id)


@dataclass(frozen=True, slots=True)
class Assignment:
    """Send a queued request to a pod for at most `max_tokens` more output tokens."""

    request_id: str
    pod_id: str
    max_tokens: int = ALL_REMAINING
    # Place in the engine's own queue, lower first (vLLM's `--scheduling-policy priority`; equal
    # ranks start in arrival order). It only matters when the policy queues the request inside
    # the engine (admission lookahead): the engine then keeps the policy's order.
    rank: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"Assignment.max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.rank <= MAX_RANK:
            raise ValueError(f"Assignment.rank must be within 0..{MAX_RANK}, got {self.rank}")




@dataclass(frozen=True, slots=True)
class Preempt:
    """Stop a running request on its pod and put it back in the dispatcher queue."""

    request_id: str
    pod_id: str


Decision = Assignment | Preempt


class Policy(Protocol):
    """A scheduling policy: pure, deterministic, one decision method.

    Every decision concerns queued work (an Assignment starts a queued request; a Preempt makes
    room for one), so with an empty queue there is nothing to decide, and neither the dispatcher
    nor the simulator calls `decide` then.
    """

    name: str

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]: ...


@dataclass(frozen=True, slots=True)
class DecisionBatch:
    """Decisions split by kind, in application order (preemptions first)."""

    preempts: tuple[Preempt, ...] = field(default_factory=tuple)
    assignments: tuple[Assignment, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, decisions: tuple[Decision, ...] | list[Decision]) -> DecisionBatch:
        return cls(
            preempts=tuple(d for d in decisions if isinstance(d, Preempt)),
            assignments=tuple(d for d in decisions if isinstance(d, Assignment)),
        )
