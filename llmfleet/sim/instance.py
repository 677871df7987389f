"""One simulated vLLM instance: continuous batching, a token budget, KV blocks, recompute
preemption and an LRU prefix cache keyed by prefix hashes.

Model (vLLM V1-like):

* Requests handed to the engine wait in its FCFS queue and are admitted while fewer than
  ``max_running`` run and the KV pool has room for their un-cached context (head-of-line
  blocking, as vLLM does).
* Each iteration decodes one token for every running sequence and spends the rest of the
  ``token_budget`` on prefill chunks (chunked prefill). A prefill that completes emits a token.
* KV is allocated in blocks of ``block_size`` tokens. When decode growth does not fit, the
  most recently admitted request is preempted by recompute and re-queued at the front.
* The prefix cache holds chunks of ``prefix_block_tokens``: chunks named by a trace's
  ``hash_ids`` (shared between requests) and a request's own chunks (so a request that left
  after a slice or a preemption resumes cheaply on the same engine). Chunks in use are pinned;
  free ones are evicted least-recently-used when blocks are needed. Private blocks plus cached
  chunks never exceed the pool (``check_invariants``).
* Runs of pure decode iterations are advanced in one event (the batch is fixed until someone
  finishes or KV runs short), which is what makes the simulator fast; a submission that could
  join the batch cuts such a run at the next step boundary.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Protocol

from llmfleet.sim.costmodel import CostModel

if TYPE_CHECKING:
    from llmfleet.sim.request import SimRequest


@dataclass(frozen=True)
class EngineConfig:
    max_running: int = 64
    token_budget: int = 8192
    block_size: int = 16
    kv_capacity_tokens: int | None = None  # None: the cost model's suggestion
    prefix_block_tokens: int = 512

    def __post_init__(self) -> None:
        if self.max_running < 1 or self.token_budget < 1 or self.block_size < 1:
            raise ValueError("max_running, token_budget and block_size must be positive")
        if self.prefix_block_tokens % self.block_size:
            raise ValueError("prefix_block_tokens must be a multiple of block_size")


class EngineSink(Protocol):
    def kick(self, inst: Instance) -> None: ...

    def schedule(self, inst: Instance, t_end: float, version: int) -> None: ...

    def on_leave(self, inst: Instance, req: SimRequest, t: float, reason: str) -> None: ...


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Instance:
    """A vLLM-like engine driven by the simulator's event loop."""

    def __init__(self, idx: int, pod_id: str, cfg: EngineConfig, cost: CostModel, sink: EngineSink) -> None:
        self.idx = idx
        self.pod_id = pod_id
        self.cfg = cfg
        self.cost = cost
        self.sink = sink
        self.B = cfg.block_size
        self.C = cfg.prefix_block_tokens
        cap_tokens = cfg.kv_capacity_tokens if cfg.kv_capacity_tokens is not None else cost.kv_capacity_tokens
        self.capacity = cap_tokens // self.B
        self.used_priv = 0
        self.lru: OrderedDict[object, int] = OrderedDict()  # unpinned cached chunks -> blocks
        self.pinned: dict[object, list[int]] = {}  # pinned chunks -> [blocks, refcount]
        self.cache_blocks = 0
        self.unpinned_blocks = 0
        self.waiting: deque[SimRequest] = deque()
        self.wait_est_tokens = 0.0  # sum of SimRequest.wait_est over `waiting` (load reports)
        self.wait_prefill = 0  # context tokens the waiting requests will prefill
        # Running aggregates for load reports: sum of expected final lengths (capped by the
        # slice target), of generated tokens and of prefill still to do.
        self.run_cap = 0.0
        self.run_gen = 0
        self.run_prefill = 0
        self.running: list[SimRequest] = []
        self.busy = False
        self.version = 0
        self.iter_start = 0.0
        self.iter_end = 0.0
        self.iter_k = 0
        self.iter_decoders: list[SimRequest] = []
        self.iter_chunks: list[tuple[SimRequest, int]] = []
        self.iter_ctx = 0
        self.busy_s = 0.0
        self.preemptions = 0
        self.pending_preempts = 0
        self.prefix_hits_tokens = 0
        self.prefill_tokens = 0
        self.cache_dirty = True

    # ----------------------------------------------------------------- KV and prefix cache
    def free_blocks(self) -> int:
        return self.capacity - self.used_priv - self.cache_blocks + self.unpinned_blocks

    def _keys(self, req: SimRequest, ctx: int, shared_only: bool = False) -> Iterator[tuple[object, int]]:
        """Cache keys covering the context's leading full chunks, with their sizes in tokens.

        Shared chunks are the trace's hash ids (``prefix_block_tokens`` each); after them come
        the request's own blocks (``block_size`` each, as vLLM caches them). Lazy, because
        lookups stop at the first miss.
        """
        C = self.C
        hashed = min(len(req.hash_ids), req.prompt // C, ctx // C)
        for i in range(hashed):
            yield req.hash_ids[i], C
        if not shared_only:
            rid, B = req.rid, self.B
            for j in range((ctx - hashed * C) // B):
                yield (rid, j), B

    def _evict_until(self, need: int) -> None:
        while self.capacity - self.used_priv - self.cache_blocks < need and self.lru:
            key, blocks = self.lru.popitem(last=False)
            self.cache_blocks -= blocks
            self.unpinned_blocks -= blocks
            self.cache_dirty = True

    def _try_admit(self, req: SimRequest) -> bool:
        ctx = req.prompt + req.generated
        keys: list[tuple[object, int]] = []
        hit_tokens = 0
        lru, pinned = self.lru, self.pinned
        for kt in self._keys(req, ctx):
            if kt[0] in lru or kt[0] in pinned:
                keys.append(kt)
                hit_tokens += kt[1]
            else:
                break
        if keys and hit_tokens >= ctx:  # the last token is always recomputed
            hit_tokens -= keys.pop()[1]
        need = _ceil_div(ctx - hit_tokens + 1, self.B)
        reclaim = sum(self.lru[k] for k, _ in keys if k in self.lru)
        if need > self.free_blocks() - reclaim:
            return False
        for key, _ in keys:
            if key in self.lru:
                blocks = self.lru.pop(key)
                self.unpinned_blocks -= blocks
                self.pinned[key] = [blocks, 1]
            else:
                self.pinned[key][1] += 1
        self._evict_until(need)
        self.used_priv += need
        req.pinned = [k for k, _ in keys]
        req.hit_chunks = len(keys)
        req.priv_blocks = need
        req.priv_tokens = ctx - hit_tokens
        req.prefill_left = ctx - hit_tokens
        self.prefix_hits_tokens += hit_tokens
        self.prefill_tokens += req.prefill_left
        return True

    def _release(self, req: SimRequest, keep: str) -> None:
        """Free a request's KV. keep: "all" own+shared chunks stay cached, "shared" only hash chunks."""
        for key in req.pinned:
            entry = self.pinned[key]
            entry[1] -= 1
            if entry[1] == 0:
                del self.pinned[key]
                self.lru[key] = entry[0]
                self.unpinned_blocks += entry[0]
        B = self.B
        keys = self._keys(req, req.prompt + req.generated, keep == "shared")
        for key, tokens in islice(keys, req.hit_chunks, None):
            blocks = tokens // B
            if req.priv_blocks < blocks:
                break
            if key in self.lru or key in self.pinned:
                continue
            self.lru[key] = blocks
            self.cache_blocks += blocks
            self.unpinned_blocks += blocks
            self.used_priv -= blocks
            req.priv_blocks -= blocks
            self.cache_dirty = True
        self.used_priv -= req.priv_blocks
        req.priv_blocks = 0
        req.priv_tokens = 0
        req.pinned = []
        req.hit_chunks = 0

    # ----------------------------------------------------------------- submission
    def _wait_add(self, req: SimRequest) -> None:
        req.wait_est = max(1.0, min(req.target, max(req.exp_out, req.generated + 1.0)) - req.generated)
        self.wait_est_tokens += req.wait_est
        self.wait_prefill += req.prompt + req.generated

    def _wait_remove(self, req: SimRequest) -> None:
        self.wait_est_tokens -= req.wait_est
        self.wait_prefill -= req.prompt + req.generated

    def _run_add(self, req: SimRequest) -> None:
        req.run_cap = min(float(req.target), max(req.exp_out, req.generated + 1.0))
        self.run_cap += req.run_cap
        self.run_gen += req.generated
        self.run_prefill += req.prefill_left

    def _run_remove(self, req: SimRequest) -> None:
        self.run_cap -= req.run_cap
        self.run_gen -= req.generated
        self.run_prefill -= req.prefill_left

    def est_running_tokens(self) -> float:
        return max(float(len(self.running)), self.run_cap - self.run_gen)

    def _enqueue(self, req: SimRequest, ahead_of_equals: bool = False) -> None:
        """vLLM's priority queue: lower rank first, arrival order among equal ranks (a preempted
        request goes back ahead of the requests of its rank, as vLLM's earlier arrival time puts it)."""
        w = self.waiting
        if not w or (w[-1].rank < req.rank or (w[-1].rank == req.rank and not ahead_of_equals)):
            w.append(req)  # the common case: every rank 0 (FCFS policies), or in rank order
            return
        for i, other in enumerate(w):
            if other.rank > req.rank or (ahead_of_equals and other.rank == req.rank):
                w.insert(i, req)
                return
        w.append(req)

    def submit(self, req: SimRequest, t: float) -> None:
        self._enqueue(req)
        self._wait_add(req)
        if not self.busy:
            # Start after every decision of this instant is in, so they batch together.
            self.sink.kick(self)
        elif len(self.running) < self.cfg.max_running:
            self._cut(t)

    def preempt(self, req: SimRequest, t: float) -> bool:
        """Policy preemption (its KV is dropped). Returns False when the request is not on this engine."""
        if req in self.waiting:
            self.waiting.remove(req)
            self._wait_remove(req)
            self.sink.on_leave(self, req, t, "preempted")
            return True
        if req not in self.running:
            return False
        req.pending_preempt = True
        self.pending_preempts += 1
        self._cut(t)
        return True

    def _cut(self, t: float) -> None:
        """End the current run of decode steps at the first step boundary at or after `t`."""
        if self.iter_k <= 1 or not self.busy:
            return
        n = len(self.iter_decoders)
        j = self.cost.steps_within(t - self.iter_start, n, self.iter_ctx)
        if j < self.iter_k:
            self.iter_k = j
            self.iter_end = self.iter_start + self.cost.decode_steps_s(j, n, self.iter_ctx)
            self.version += 1
            self.sink.schedule(self, self.iter_end, self.version)

    # ----------------------------------------------------------------- iterations
    def start_if_idle(self, t: float) -> None:
        if not self.busy:
            self._start(t)

    def _start(self, t: float) -> None:
        cfg = self.cfg
        while self.waiting and len(self.running) < cfg.max_running:
            req = self.waiting[0]
            if not self._try_admit(req):
                break
            self.waiting.popleft()
            self._wait_remove(req)
            if req.scheduled_s is None:
                req.scheduled_s = t
            self.running.append(req)
            self._run_add(req)
        if not self.running:
            self.busy = False
            self.iter_k = 0
            return
        B = self.B
        while True:
            decoders = [r for r in self.running if r.prefill_left == 0]
            grow = sum(1 for r in decoders if r.priv_tokens % B == 0)
            if grow <= self.free_blocks() or len(self.running) == 1:
                break
            # vLLM's priority scheduler preempts the lowest-priority (largest rank), latest one.
            worst = max(range(len(self.running)), key=lambda i: (self.running[i].rank, i))
            victim = self.running.pop(worst)
            self._run_remove(victim)
            self.preemptions += 1
            self._release(victim, "all")
            victim.engine_preemptions += 1
            self._enqueue(victim, ahead_of_equals=True)
            self._wait_add(victim)
        if grow > self.free_blocks():
            raise RuntimeError(
                f"{self.pod_id}: one request needs more KV than the engine holds "
                f"(capacity {self.capacity * B} tokens); raise --kv-tokens"
            )
        budget = cfg.token_budget - len(decoders)
        chunks: list[tuple[SimRequest, int]] = []
        for r in self.running:
            if r.prefill_left and budget > 0:
                c = min(r.prefill_left, budget)
                chunks.append((r, c))
                budget -= c
        n = len(decoders)
        ctx = sum(r.prompt + r.generated for r in decoders)
        if chunks:
            k = 1
            dur = self.cost.iteration_s(sum(c for _, c in chunks), n, ctx)
        else:
            k = min(r.target - r.generated for r in decoders)
            per = self.free_blocks() // n
            k = max(1, min(k, B * per)) if per else 1
            dur = self.cost.decode_steps_s(k, n, ctx)
        self.busy = True
        self.iter_start = t
        self.iter_end = t + dur
        self.iter_k = k
        self.iter_decoders = decoders
        self.iter_chunks = chunks
        self.iter_ctx = ctx
        self.version += 1
        self.sink.schedule(self, self.iter_end, self.version)

    def on_iteration_end(self, t: float) -> None:
        self.busy_s += t - self.iter_start
        k = self.iter_k if not self.iter_chunks else 1
        B = self.B
        leaving: list[SimRequest] = []
        self.run_gen += k * len(self.iter_decoders)
        used = self.used_priv
        for r in self.iter_decoders:
            r.generated += k
            pt = r.priv_tokens + k
            r.priv_tokens = pt
            blocks = -(-pt // B)
            if blocks > r.priv_blocks:
                used += blocks - r.priv_blocks
                r.priv_blocks = blocks
            if r.generated >= r.target:
                leaving.append(r)
        self.used_priv = used
        for r, c in self.iter_chunks:
            r.prefill_left -= c
            self.run_prefill -= c
            if r.prefill_left == 0:
                r.generated += 1
                self.run_gen += 1
                r.priv_tokens += 1
                if r.first_token_s is None:
                    r.first_token_s = t
                if r.generated >= r.target:
                    leaving.append(r)
        self._evict_until(0)
        if self.pending_preempts:
            self.pending_preempts = 0
            for r in self.running:
                if r.pending_preempt and r not in leaving:
                    leaving.append(r)
        self.iter_decoders = []
        self.iter_chunks = []
        self.iter_k = 0
        for r in leaving:
            self.running.remove(r)
            self._run_remove(r)
            r.pending_preempt = False
            if r.generated >= r.output:
                self._release(r, "shared")
                self.sink.on_leave(self, r, t, "finished")
            elif r.generated >= r.target:
                self._release(r, "all")
                self.sink.on_leave(self, r, t, "slice")
            else:
                self._release(r, "all")
                self.sink.on_leave(self, r, t, "preempted")
        # The next iteration starts once the dispatcher has reacted to this instant's events,
        # so requests it assigns now join that iteration (as in vLLM's scheduler loop).
        self.busy = False
        self.sink.kick(self)

    # ----------------------------------------------------------------- reporting
    def kv_used_tokens(self) -> int:
        return (self.used_priv + self.cache_blocks - self.unpinned_blocks) * self.B

    def check_invariants(self) -> None:
        assert self.used_priv >= 0 and self.unpinned_blocks >= 0, "negative block counts"
        assert self.used_priv + self.cache_blocks <= self.capacity, (
            f"{self.pod_id}: KV over capacity ({self.used_priv}+{self.cache_blocks} > {self.capacity} blocks)"
        )
        assert self.unpinned_blocks == sum(self.lru.values()), "unpinned accounting drift"
        assert self.cache_blocks == self.unpinned_blocks + sum(e[0] for e in self.pinned.values())
        assert self.used_priv == sum(r.priv_blocks for r in self.running), "private block drift"
        assert len(self.running) <= self.cfg.max_running
