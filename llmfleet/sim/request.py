"""The simulator's mutable per-request record (policies only ever see frozen `RequestState`s)."""

from __future__ import annotations

from llmfleet.core.prediction import LengthEstimate
from llmfleet.core.scheduling import ALL_REMAINING, RequestState
from llmfleet.sim.traces import TraceRequest


class SimRequest:
    __slots__ = (
        "rid",
        "seq",
        "arrival",
        "prompt",
        "output",
        "hash_ids",
        "estimate",
        "generated",
        "enqueued_s",
        "assigned_s",
        "slice_max",
        "pod",
        "slices",
        "migrations",
        "scheduled_s",
        "first_token_s",
        "finish_s",
        "target",
        "prefill_left",
        "priv_tokens",
        "priv_blocks",
        "pinned",
        "hit_chunks",
        "pending_preempt",
        "engine_preemptions",
        "policy_preemptions",
        "exp_out",
        "wait_est",
        "run_cap",
        "rank",
        "_state",
    )

    def __init__(self, tr: TraceRequest, seq: int, estimate: LengthEstimate | None) -> None:
        self.rid = tr.request_id
        self.seq = seq
        self.arrival = tr.arrival_s
        self.prompt = tr.prompt_tokens
        self.output = tr.output_tokens
        self.hash_ids = tr.hash_ids
        self.estimate = estimate
        self.exp_out = estimate.expected_tokens if estimate is not None else 128.0
        self.generated = 0
        self.enqueued_s = tr.arrival_s
        self.assigned_s: float | None = None
        self.slice_max: int | None = None
        self.pod = -1
        self.slices = 0
        self.migrations = 0
        self.scheduled_s: float | None = None  # first moved into a batch (vLLM ignores later preemptions too)
        self.first_token_s: float | None = None
        self.finish_s: float | None = None
        self.target = 0
        self.prefill_left = 0
        self.priv_tokens = 0
        self.priv_blocks = 0
        self.pinned: list[object] = []
        self.hit_chunks = 0
        self.pending_preempt = False
        self.engine_preemptions = 0
        self.policy_preemptions = 0
        self.wait_est = 0.0
        self.run_cap = 0.0
        self.rank = 0  # place in the engine's priority queue (Assignment.rank)
        self._state: RequestState | None = None

    def assign(self, pod: int, max_tokens: int, t: float, rank: int = 0) -> None:
        if self.pod >= 0 and pod != self.pod:
            self.migrations += 1
        self.pod = pod
        self.assigned_s = t
        self.slice_max = max_tokens
        self.rank = rank
        remaining = self.output - self.generated
        self.target = self.generated + (
            remaining if max_tokens >= ALL_REMAINING else min(max_tokens, remaining)
        )
        self._state = None

    def requeue(self, t: float) -> None:
        self.enqueued_s = t
        self.assigned_s = None
        self.slice_max = None
        self._state = None

    def state(self, pod_ids: list[str]) -> RequestState:
        """Frozen snapshot, cached until the request changes at a slice boundary."""
        if self._state is None:
            self._state = RequestState(
                request_id=self.rid,
                seq=self.seq,
                arrival_s=self.arrival,
                prompt_tokens=self.prompt,
                generated_tokens=self.generated,
                max_output_tokens=None,
                true_output_tokens=self.output,
                estimate=self.estimate,
                hash_ids=self.hash_ids,
                pod_id=pod_ids[self.pod] if self.pod >= 0 else None,
                enqueued_s=self.enqueued_s,
                assigned_s=self.assigned_s,
                slice_max_tokens=self.slice_max,
                slices=self.slices,
            )
        return self._state
