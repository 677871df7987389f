"""The dispatcher's connection to one sidecar: slices, tokenization and a live load stream.

A `PodConnection` keeps a load-report stream open and reconnects with backoff when it breaks, so
a pod whose sidecar died is marked unhealthy within one failed call and comes back on its own
when the sidecar does. gRPC errors become `PodFailure`; slice results become domain events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import math
from collections.abc import Callable, Sequence

import grpc

from llmfleet.core.clock import Clock
from llmfleet.core.sampling import SamplingParams
from llmfleet.core.scheduling import PodState
from llmfleet.dispatcher.slice_stream import Deliver, PodFailure, SliceStream
from llmfleet.serving import Token, token_value
from llmfleet.v1 import sidecar_pb2, sidecar_pb2_grpc

log = logging.getLogger(__name__)
PREFIX_MEMORY = 4096  # prefix hashes remembered per pod
# What the dispatcher checks every request against (see Dispatcher.pod_limits); a write to any
# of them moves `PodConnection.limits_version`, so the dispatcher need not rescan the pods.
LIMIT_FIELDS = frozenset({"max_model_len", "block_size", "vocab_size"})


def slice_seed(seed: int, position: int) -> int:
    """The seed of a slice that starts after `position` generated tokens.

    vLLM's random stream cannot be resumed mid-request, so each slice draws from its own stream:
    the request's seed itself for the first slice (an unsliced request samples exactly as vLLM
    would), and a hash of (seed, position) after that. Every token is still sampled from the same
    distribution, and a replay with the same slice boundaries gives the same tokens.
    """
    if position == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def sampling_to_proto(s: SamplingParams, generated: int = 0) -> sidecar_pb2.Sampling:
    """The slice's sampling. `min_tokens` counts what earlier slices already generated; stop
    strings stay with the dispatcher, which checks them across slices."""
    msg = sidecar_pb2.Sampling(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or 0,
                               stop_token_ids=list(s.stop_token_ids),
                               include_stop_str_in_output=s.include_stop_str_in_output)  # fmt: skip
    if s.seed is not None:
        msg.seed = slice_seed(s.seed, generated)
    min_tokens = int(s.extra.get("min_tokens", 0) or 0)
    if min_tokens > generated:
        msg.min_tokens = min_tokens - generated
    for token, bias in (s.extra.get("logit_bias") or {}).items():
        msg.logit_bias[int(token)] = float(bias)
    return msg


class PodConnection:
    """One sidecar at `address`, known to the dispatcher as `pod_id`."""

    limits_version = 0  # moves whenever any connection's LIMIT_FIELDS change

    def __init__(
        self,
        pod_id: str,
        address: str,
        *,
        clock: Clock,
        on_change: Callable[[], None],
        credentials: grpc.ChannelCredentials | None = None,
        load_interval_ms: int = 250,
        stale_after_s: float = 3.0,
        token: Token | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        self.pod_id = pod_id
        self.address = address
        self.clock = clock
        self._on_change = on_change
        options: list[tuple[str, str | int]] = [
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            # A peer that stops answering (SIGSTOP, a dead node) is found by pings, not by waiting.
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        if credentials and tls_server_name:  # pods are dialled by IP; their certificate names the fleet
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        self.channel = (
            grpc.aio.secure_channel(address, credentials, options=options)
            if credentials
            else grpc.aio.insecure_channel(address, options=options)
        )
        self.stub = sidecar_pb2_grpc.SidecarStub(self.channel)
        # The sidecar's bearer token, sent with every call (the sidecar API is not for anyone else).
        self._token = token
        self.load_interval_ms = load_interval_ms
        # No load report for this long: the sidecar is hung (its stream stalls, it never errors).
        self.stale_after_s = stale_after_s
        self.last_report_s = clock.now()
        # From Info and load reports.
        self.group = ""
        self.max_num_seqs = 256
        self.kv_capacity_tokens = 0
        self.block_size = 128
        self.max_model_len = 0
        self.model = ""  # the served model's name, as its sidecar reports it
        self.vocab_size = 0  # its tokenizer's vocabulary (0: not known)
        self.connected = False
        self.engine_healthy = False
        self.draining = False
        self.engine_running = 0
        self.engine_waiting = 0
        self.kv_cache_usage = 0.0
        self.cooldown_until = 0.0
        # The dispatcher's own accounting (authoritative, no report lag).
        self.inflight: dict[str, tuple[int, float]] = {}  # request id -> (kv tokens reserved, expected tokens left)
        self._reserved_kv = 0
        self._tokens_left = 0.0
        # Prompt tokens of slices sent here that have not produced a token yet (prefill pacing).
        self.prefilling: dict[str, int] = {}
        self.seconds_per_token = 0.02
        self._prefixes: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._prefill_tokens = 0  # sum of `prefilling`
        # The last state() and until when it holds (see state()). Any attribute written clears it.
        self._snapshot: PodState | None = None
        self._snapshot_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        # Every slice to this pod travels over one Slices call (see slice_stream).
        self.slices = SliceStream(pod_id, lambda: self.stub.Slices(metadata=self.metadata))

    def __setattr__(self, name: str, value: object) -> None:
        # Every field state() reads is an attribute of this object (the dicts change only with
        # the counters beside them), so a write to any attribute retires the last snapshot.
        object.__setattr__(self, name, value)
        if name != "_snapshot" and name != "_snapshot_until":
            object.__setattr__(self, "_snapshot", None)
            if name in LIMIT_FIELDS:
                PodConnection.limits_version += 1

    # ----- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name=f"pod-{self.pod_id}-load")

    async def close(self) -> None:
        self.closed = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.slices.close()
        await self.channel.close(grace=None)

    async def _watch(self) -> None:
        backoff = 0.2
        while not self.closed:
            try:
                info = await self.stub.Info(sidecar_pb2.InfoRequest(), timeout=10, metadata=self.metadata)
                self.group = info.group
                self.max_num_seqs = info.max_num_seqs or self.max_num_seqs
                self.kv_capacity_tokens = int(info.kv_capacity_tokens)
                self.block_size = info.block_size or self.block_size
                self.max_model_len = info.max_model_len
                self.model = info.model
                self.vocab_size = info.vocab_size
                call = self.stub.StreamLoad(sidecar_pb2.LoadRequest(interval_ms=self.load_interval_ms), metadata=self.metadata)
                async for report in call:
                    self._apply(report)
                    backoff = 0.2
            except grpc.aio.AioRpcError as exc:
                log.info("pod %s (%s) load stream lost: %s", self.pod_id, self.address, exc.code().name)
            self._set_connected(False)
            await self.clock.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _apply(self, r: sidecar_pb2.LoadReport) -> None:
        before = self.healthy_now()
        self.last_report_s = self.clock.now()
        self.connected = True
        self.engine_healthy = r.engine_healthy
        self.draining = r.draining
        self.engine_running = r.running
        self.engine_waiting = r.waiting
        self.kv_cache_usage = r.kv_cache_usage
        if r.kv_capacity_tokens:
            self.kv_capacity_tokens = int(r.kv_capacity_tokens)
        if r.max_num_seqs:
            self.max_num_seqs = r.max_num_seqs
        self.group = r.group or self.group
        self.vocab_size = r.vocab_size or self.vocab_size
        if self.healthy_now() != before:
            self._on_change()

    def _set_connected(self, value: bool) -> None:
        if self.connected != value:
            self.connected = value
            self._on_change()

    def healthy_now(self) -> bool:
        return self.connected and self.engine_healthy and not self.draining and not self.closed

    def healthy(self, now: float) -> bool:
        return self.healthy_now() and now >= self.cooldown_until and now - self.last_report_s <= self.stale_after_s

    # ----- accounting ---------------------------------------------------------------------------
    def remember_prefixes(self, hashes: tuple[int, ...]) -> None:
        for h in hashes:
            self._prefixes[h] = None
            self._prefixes.move_to_end(h)
        while len(self._prefixes) > PREFIX_MEMORY:
            self._prefixes.popitem(last=False)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token_value(self._token)}"),) if self._token else ()

    def add_inflight(self, request_id: str, kv_tokens: int, expected_left: float) -> None:
        self.remove_inflight(request_id)
        self.inflight[request_id] = (kv_tokens, expected_left)
        self._reserved_kv += kv_tokens
        self._tokens_left += expected_left

    def start_prefill(self, request_id: str, context_tokens: int) -> None:
        self.prefill_done(request_id)
        self.prefilling[request_id] = context_tokens
        self._prefill_tokens += context_tokens

    def prefill_done(self, request_id: str) -> None:
        """The slice produced its first token: its prompt is no longer being prefilled."""
        self._prefill_tokens -= self.prefilling.pop(request_id, 0)

    def remove_inflight(self, request_id: str) -> None:
        self.prefill_done(request_id)
        entry = self.inflight.pop(request_id, None)
        if entry is not None:
            self._reserved_kv -= entry[0]
            self._tokens_left -= entry[1]
            if not self.inflight:
                self._reserved_kv, self._tokens_left = 0, 0.0  # no float drift when idle

    def state(self, now: float) -> PodState:
        """This pod as the policy sees it. A scheduling round asks every pod, up to a thousand
        rounds a second, so the last snapshot is reused until an attribute changes or the clock
        reaches the moment its health would change (a load report going stale, a cooldown ending)."""
        snapshot = self._snapshot
        if snapshot is not None and now < self._snapshot_until:
            return snapshot
        healthy = self.healthy(now)
        if healthy:  # until the last report goes stale
            until = math.nextafter(self.last_report_s + self.stale_after_s, math.inf)
        elif self.healthy_now() and now < self.cooldown_until:  # until the cooldown ends
            until = self.cooldown_until
        else:  # until something is written: a report, a reconnection
            until = math.inf
        n = len(self.inflight)
        capacity = self.kv_capacity_tokens or max(1, self.max_model_len) * self.max_num_seqs
        reserved = self._reserved_kv
        used = max(reserved, int(self.kv_cache_usage * capacity)) if n else reserved
        tokens_left = max(0.0, self._tokens_left)
        state = PodState(
            pod_id=self.pod_id,
            group=self.group or None,
            kv_capacity_tokens=capacity,
            kv_used_tokens=used,
            block_size=self.block_size,
            max_running=self.max_num_seqs,
            running=min(n, self.max_num_seqs),
            waiting=max(0, n - self.max_num_seqs),
            est_remaining_s=tokens_left * self.seconds_per_token,
            est_remaining_tokens=tokens_left,
            pending_prefill_tokens=self._prefill_tokens,
            # A live, read-only view of the LRU: copying 4,096 hashes whenever a slice starts
            # cost more than the policy itself. Nothing changes it while decide() runs.
            cached_prefixes=self._prefixes.keys(),
            prefix_block_tokens=self.block_size,
            healthy=healthy,
        )
        self._snapshot = state
        self._snapshot_until = until
        return state

    # ----- calls --------------------------------------------------------------------------------
    async def tokenize(
        self, text: str, timeout_s: float = 10.0, messages: Sequence[tuple[str, str]] = ()
    ) -> tuple[list[int], int]:
        """Token ids of `text`, or of chat `messages` under the model's chat template."""
        chat = [sidecar_pb2.ChatMessage(role=r, content=c) for r, c in messages]
        try:
            request = sidecar_pb2.TokenizeRequest(text=text, messages=chat)
            resp = await self.stub.Tokenize(request, timeout=timeout_s, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise ValueError(exc.details()) from exc
            raise PodFailure(f"tokenize on {self.pod_id} failed: {exc.code().name}: {exc.details()}") from exc
        return list(resp.token_ids), int(resp.max_model_len)

    def open_slice(
        self,
        request_id: str,
        prompt_ids: list[int],
        generated: list[int],
        max_tokens: int,
        deliver: Deliver,
        *,
        priority: int,
        ignore_eos: bool,
        sampling: SamplingParams,
        pending_text_tokens: int = 0,
    ) -> int:
        """Start a slice on this pod; its events go to `deliver` (see `SliceStream.open`)."""
        item = sidecar_pb2.SliceItem(
            request_id=request_id,
            prompt_token_ids=prompt_ids,
            generated_token_ids=generated,
            max_tokens=max_tokens,
            priority=priority,
            ignore_eos=ignore_eos,
            sampling=sampling_to_proto(sampling, len(generated)),
            pending_text_tokens=pending_text_tokens,
        )
        return self.slices.open(item, deliver)
