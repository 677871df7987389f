"""The discrete-event simulator: a dispatcher queue, N engines, a policy, and a trace.

It is the *mechanism* half of the scheduling contract in ``llmfleet.core.scheduling``: at
every scheduling point (arrivals, slice ends, finished or preempted requests) it builds a
``SchedulerView``, asks the policy for decisions and applies them, exactly as the live
dispatcher does. Output-length predictions come from any ``LengthPredictor``, consulted
once per request at admission.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llmfleet.core.prediction import LengthPredictor, PredictionInput
from llmfleet.core.scheduling import Assignment, PodState, Policy, Preempt, RequestState, SchedulerView
from llmfleet.sim.costmodel import CostModel
from llmfleet.sim.instance import EngineConfig, Instance
from llmfleet.sim.request import SimRequest
from llmfleet.sim.traces import TraceRequest

_PREDICT_CHUNK = 2048


def check_speed_phases(phases: Sequence[tuple[float, float]]) -> None:
    """ValueError unless `phases` (`SimConfig.speed_phases`) ascend in time with positive factors."""
    if any(f <= 0 for _, f in phases) or any(a[0] >= b[0] for a, b in itertools.pairwise(phases)):
        raise ValueError("speed_phases needs ascending start times and positive factors")


@dataclass(frozen=True)
class SimConfig:
    instances: int = 4
    engine: EngineConfig = field(default_factory=EngineConfig)
    recent_window: int = 1024
    pod_groups: tuple[str | None, ...] | None = None
    check_invariants: bool = False  # assert engine invariants after every event (tests)
    # Each instance's time as a multiple of the cost model's (None: all 1). Engines sharing a
    # host's cores do not run at one speed: on the 2-core CPU fleet one ran 2-4x slower per token
    # than the other (bench/DATAPLANE.md, section 5); `llmfleet sim calibrate --fleet` measures it.
    instance_speeds: tuple[float, ...] | None = None
    # The machine's speed moving within a run: (from second, time factor) pairs, ascending; from
    # each moment on every engine's time is the factor times its own (None: constant). A live
    # replay's engines ran 14 ms a token in its first 20 s and 10.5 ms later, a phase its mean
    # speed hides and a queue remembers (bench/DATAPLANE.md, section 4); `llmfleet.demo.drift`
    # fits these to a replay. A decode run under way at a change is cut at its next step; the
    # step or prefill then in flight ends at the speed it started with.
    speed_phases: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ValueError("instances must be at least 1")
        if self.pod_groups is not None and len(self.pod_groups) != self.instances:
            raise ValueError("pod_groups needs one entry per instance")
        if self.instance_speeds is not None and (
            len(self.instance_speeds) != self.instances or min(self.instance_speeds) <= 0
        ):
            raise ValueError("instance_speeds needs one positive multiplier per instance")
        check_speed_phases(self.speed_phases or ())


@dataclass
class RequestRecord:
    request_id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    generated_tokens: int
    first_token_s: float
    finish_s: float
    slices: int
    migrations: int
    preemptions: int
    # When the engine first batched it; NaN if never. First token minus this is vLLM's prefill time.
    scheduled_s: float = math.nan

    @property
    def latency_s(self) -> float:
        return self.finish_s - self.arrival_s

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def engine_prefill_s(self) -> float:
        """First batched to the first token (with no data plane, vLLM's `request_prefill_time`)."""
        return self.first_token_s - self.scheduled_s


@dataclass
class SimResult:
    policy: str
    records: list[RequestRecord]
    busy_s: list[float]
    wall_s: float
    decide_calls: int
    policy_errors: int
    engine_preemptions: int
    prefix_hit_tokens: int
    prefill_tokens: int
    completion_times: list[float] = field(default_factory=list)


class Simulator:
    """Replays one trace under one policy. Create a new one per run."""

    def __init__(
        self,
        trace: Sequence[TraceRequest],
        policy: Policy,
        cost: CostModel,
        cfg: SimConfig | None = None,
        predictor: LengthPredictor | None = None,
        progress: Callable[[int, int], None] | None = None,
        observer: Callable[[float, SimRequest, str], None] | None = None,
    ) -> None:
        self.trace = list(trace)
        if not self.trace:
            raise ValueError("the trace is empty")
        self.policy = policy
        self.cost = cost
        self.cfg = cfg or SimConfig()
        self.predictor = predictor
        self._reestimates = predictor is not None and bool(getattr(predictor, "reestimates", False))
        self.progress = progress
        self.observer = observer
        self.pod_ids = [f"pod-{i}" for i in range(self.cfg.instances)]
        self.pod_index = {p: i for i, p in enumerate(self.pod_ids)}
        speeds = self.cfg.instance_speeds or (1.0,) * self.cfg.instances
        self.instances = [
            Instance(i, p, self.cfg.engine, cost if speeds[i] == 1.0 else cost.slowed(speeds[i]), self)
            for i, p in enumerate(self.pod_ids)
        ]
        self._costs = [inst.cost for inst in self.instances]  # each engine's at factor 1
        self._phases = list(self.cfg.speed_phases or ())
        self.heap: list[tuple[float, int, int, int]] = []
        self._seq = 0
        self.queue: dict[str, SimRequest] = {}
        self.running: dict[str, SimRequest] = {}
        # Frozen snapshots kept alongside, so building a view is one C-level copy per field.
        self.queue_states: dict[str, RequestState] = {}
        self.running_states: dict[str, RequestState] = {}
        self.done: list[SimRequest] = []
        self.admitted = 0  # trace requests arrived so far (their seq is their index)
        self.recent: deque[int] = deque(maxlen=self.cfg.recent_window)
        self.changed = False
        self.decide_calls = 0
        self.policy_errors = 0
        self.now = 0.0
        self._estimates: list = []
        self._has_hashes = any(tr.hash_ids for tr in self.trace[:1000])
        self._prefix_sets: list[frozenset[int]] = [frozenset()] * self.cfg.instances
        self._recompute = cost.recompute_s_per_token()
        self._kicks: list[Instance] = []
        # Slices assigned but not yet at their engine: (time it arrives, seq, request id, instance).
        self._in_transit: list[tuple[float, int, str, int]] = []
        self._transit_ids: dict[str, int] = {}  # request id -> its live entry's seq (older ones are stale)
        self._transit_count = [0] * self.cfg.instances  # what the dispatcher counts and the engine not yet
        # Slices the engine ended whose end has not reached the dispatcher: (when it does, instance).
        self._ending: list[tuple[float, int]] = []
        self._ending_count = [0] * self.cfg.instances  # still counted against their pod by the dispatcher

    # ------------------------------------------------------------------ EngineSink
    def kick(self, inst: Instance) -> None:
        self._kicks.append(inst)

    def schedule(self, inst: Instance, t_end: float, version: int) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (t_end, self._seq, inst.idx, version))

    def on_leave(self, inst: Instance, req: SimRequest, t: float, reason: str) -> None:
        del self.running[req.rid]
        del self.running_states[req.rid]
        self.changed = True
        if reason in ("finished", "slice") and self.cost.end_notice_s > 0:
            # The engine may start its next request now; the dispatcher's count frees the slot
            # only when the slice's end reaches it.
            heapq.heappush(self._ending, (t + self.cost.end_notice_s, inst.idx))
            self._ending_count[inst.idx] += 1
        if reason == "finished":
            req.finish_s = t
            self.done.append(req)
            self.recent.append(req.output)
            if self.progress is not None and len(self.done) % 500 == 0:
                self.progress(len(self.done), len(self.trace))
        else:
            if reason == "slice":
                req.slices += 1
            else:
                req.policy_preemptions += 1
            req.requeue(t)
            if self._reestimates and reason == "slice":
                self._reestimate(req)
            self.queue[req.rid] = req
            self.queue_states[req.rid] = req.state(self.pod_ids)
        if self.observer is not None:
            self.observer(t, req, reason)

    # ------------------------------------------------------------------ predictions
    def _reestimate(self, req: SimRequest) -> None:
        """A slice boundary: ask again, knowing what was generated (as the live dispatcher does)."""
        assert self.predictor is not None
        item = PredictionInput(req.rid, req.prompt, true_output_tokens=req.output, generated_tokens=req.generated)
        (req.estimate,) = self.predictor.predict([item])
        req.exp_out = req.estimate.expected_tokens

    def _estimate(self, i: int):
        if self.predictor is None:
            return None
        while i >= len(self._estimates):
            lo = len(self._estimates)
            batch = self.trace[lo : lo + _PREDICT_CHUNK]
            items = [
                PredictionInput(
                    request_id=tr.request_id,
                    prompt_tokens=tr.prompt_tokens,
                    true_output_tokens=tr.output_tokens,
                )
                for tr in batch
            ]
            got = self.predictor.predict(items)
            if len(got) != len(items):
                raise RuntimeError(
                    f"predictor {self.predictor.name!r} returned {len(got)} estimates for {len(items)}"
                )
            self._estimates.extend(got)
        return self._estimates[i]

    # ------------------------------------------------------------------ views
    def _pod_state(self, inst: Instance) -> PodState:
        n_run = len(inst.running)
        tokens = inst.est_running_tokens() + inst.wait_est_tokens
        pending_prefill = inst.run_prefill + inst.wait_prefill
        n_eff = max(1, min(inst.cfg.max_running, n_run + len(inst.waiting)))
        est_s = self.cost.prefill_s(pending_prefill) + tokens / n_eff * self.cost.decode_step_s(n_eff, 0.0)
        if self._has_hashes and inst.cache_dirty:
            self._prefix_sets[inst.idx] = frozenset(
                k for k in (*inst.lru.keys(), *inst.pinned.keys()) if isinstance(k, int)
            )
            inst.cache_dirty = False
        return PodState(
            pod_id=inst.pod_id,
            group=self.cfg.pod_groups[inst.idx] if self.cfg.pod_groups else None,
            kv_capacity_tokens=inst.capacity * inst.B,
            kv_used_tokens=inst.kv_used_tokens(),
            block_size=inst.B,
            max_running=inst.cfg.max_running,
            running=n_run,
            waiting=len(inst.waiting) + self._transit_count[inst.idx] + self._ending_count[inst.idx],
            est_remaining_s=est_s,
            est_remaining_tokens=tokens,
            pending_prefill_tokens=pending_prefill,
            cached_prefixes=self._prefix_sets[inst.idx],
            prefix_block_tokens=inst.C,
            recompute_s_per_token=self._recompute,
        )

    def view(self) -> SchedulerView:
        return SchedulerView(
            now=self.now,
            queue=tuple(self.queue_states.values()),
            running=tuple(self.running_states.values()),
            pods=tuple(self._pod_state(inst) for inst in self.instances),
            recent_output_tokens=tuple(self.recent),
            completed=len(self.done),
            admitted=self.admitted,
        )

    def _apply(self, decisions: Sequence[object]) -> None:
        assigned: set[str] = set()
        for d in decisions:
            if isinstance(d, Preempt):
                req = self.running.get(d.request_id)
                idx = self.pod_index.get(d.pod_id)
                if req is not None and idx is not None and req.pod == idx and req.rid in self._transit_ids:
                    del self._transit_ids[req.rid]  # caught before it reached the engine
                    self._transit_count[idx] -= 1
                    self.on_leave(self.instances[idx], req, self.now, "preempted")
                    continue
                if (
                    req is None
                    or idx is None
                    or req.pod != idx
                    or not self.instances[idx].preempt(req, self.now)
                ):
                    self.policy_errors += 1
            elif isinstance(d, Assignment):
                req = self.queue.get(d.request_id)
                idx = self.pod_index.get(d.pod_id)
                if req is None or idx is None or d.request_id in assigned:
                    self.policy_errors += 1
                    continue
                assigned.add(d.request_id)
                del self.queue[d.request_id]
                del self.queue_states[d.request_id]
                req.assign(idx, d.max_tokens, self.now, d.rank)
                self.running[req.rid] = req
                self.running_states[req.rid] = req.state(self.pod_ids)
                if self.cost.dispatch_delay_s > 0:  # the data plane carries it there: it counts as running
                    self._seq += 1
                    heapq.heappush(self._in_transit, (self.now + self.cost.dispatch_delay_s, self._seq, req.rid, idx))
                    self._transit_ids[req.rid] = self._seq
                    self._transit_count[idx] += 1
                else:
                    self.instances[idx].submit(req, self.now)
            else:
                self.policy_errors += 1

    # ------------------------------------------------------------------ main loop
    def _change_speed(self, t: float, factor: float) -> None:
        """From `t` on, every engine runs at `factor` times its own time (`SimConfig.speed_phases`)."""
        self.now = max(self.now, t)
        for inst, cost in zip(self.instances, self._costs, strict=True):
            inst._cut(self.now)  # at the old speed: the steps already under way
            inst.cost = cost.slowed(factor)

    def run(self) -> SimResult:
        wall0 = time.perf_counter()
        trace, heap, instances = self.trace, self.heap, self.instances
        n = len(trace)
        i = 0
        inf = math.inf
        while len(self.done) < n:
            t_arr = trace[i].arrival_s if i < n else inf
            t_ev = heap[0][0] if heap else inf
            if self._in_transit and self._in_transit[0][0] < t_ev:
                t_ev = self._in_transit[0][0]
            if self._ending and self._ending[0][0] < t_ev:
                t_ev = self._ending[0][0]
            if self._phases and self._phases[0][0] < t_ev and self._phases[0][0] <= t_arr:
                self._change_speed(*self._phases.pop(0))
                continue
            if t_arr == inf and t_ev == inf:
                raise RuntimeError(
                    f"policy {self.policy.name!r} left {len(self.queue)} requests queued while every pod "
                    f"is idle and no arrivals remain (it must eventually assign every request)"
                )
            now = t_arr if t_arr < t_ev else t_ev
            if now < self.now - 1e-9:
                raise RuntimeError(f"time ran backwards: {now} < {self.now}")
            self.now = now
            while heap and heap[0][0] <= now:
                _, _, idx, version = heapq.heappop(heap)
                inst = instances[idx]
                if version == inst.version and inst.busy:
                    inst.on_iteration_end(now)
                    if self.cfg.check_invariants:
                        inst.check_invariants()
            while self._ending and self._ending[0][0] <= now:
                _, idx = heapq.heappop(self._ending)
                self._ending_count[idx] -= 1
                self.changed = True  # a slot the dispatcher can fill again
            while self._in_transit and self._in_transit[0][0] <= now:
                _, seq, rid, idx = heapq.heappop(self._in_transit)
                if self._transit_ids.get(rid) == seq:  # else taken back on the way
                    del self._transit_ids[rid]
                    self._transit_count[idx] -= 1
                    instances[idx].submit(self.running[rid], now)
            while i < n and trace[i].arrival_s <= now:
                tr = trace[i]
                req = SimRequest(tr, i, self._estimate(i))
                self.queue[req.rid] = req
                self.queue_states[req.rid] = req.state(self.pod_ids)
                if self.observer is not None:
                    self.observer(now, req, "arrived")
                i += 1
                self.changed = True
            self.admitted = i
            rounds = 0
            # Applying decisions can itself create a scheduling point (a request preempted
            # from an engine queue returns at once); settle those at the same instant.
            while self.changed and rounds < 4:
                rounds += 1
                self.changed = False
                if not self.queue:  # nothing to decide (see Policy)
                    break
                self.decide_calls += 1
                self._apply(self.policy.decide(self.view()))
                if self.cfg.check_invariants:
                    for inst in instances:
                        inst.check_invariants()
            if self._kicks:
                kicks, self._kicks = self._kicks, []
                for inst in kicks:
                    inst.start_if_idle(now)
        if self.progress is not None:
            self.progress(n, n)
        first_relay, finish_relay = self.cost.first_token_relay_s, self.cost.finish_relay_s
        records = [
            RequestRecord(
                request_id=r.rid,
                arrival_s=r.arrival,
                prompt_tokens=r.prompt,
                output_tokens=r.output,
                generated_tokens=r.generated,
                # The client reads the first and the last token a relay after the engine made them.
                first_token_s=r.first_token_s + first_relay if r.first_token_s is not None else math.nan,
                finish_s=max(r.finish_s + finish_relay, (r.first_token_s or 0.0) + first_relay)
                if r.finish_s is not None
                else math.nan,
                slices=r.slices,
                migrations=r.migrations,
                preemptions=r.engine_preemptions + r.policy_preemptions,
                scheduled_s=r.scheduled_s if r.scheduled_s is not None else math.nan,
            )
            for r in self.done
        ]
        return SimResult(
            policy=self.policy.name,
            records=records,
            busy_s=[inst.busy_s for inst in instances],
            wall_s=time.perf_counter() - wall0,
            decide_calls=self.decide_calls,
            policy_errors=self.policy_errors,
            engine_preemptions=sum(inst.preemptions for inst in instances),
            prefix_hit_tokens=sum(inst.prefix_hits_tokens for inst in instances),
            prefill_tokens=sum(inst.prefill_tokens for inst in instances),
        )
