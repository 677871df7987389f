"""A simulated vLLM engine with the same interface as `EngineClient`, for capacity tests and fast unit tests.

It models what the data plane depends on: a bounded number of sequence slots (vLLM's
`--max-num-seqs`), FCFS or priority admission, one token per running sequence per decode step,
a step time that grows with the batch, and deterministic token ids that depend only on the
token history, so "prompt + generated so far" continues exactly as one unsliced request would.
Time goes through a `Clock`, so tests drive it with a `FakeClock`.

Like llm-d's inference simulator it exports vLLM's own request histograms under vLLM's names
(`registry`; the sidecar serves them on its metrics port), so what reads a vLLM server's
/metrics, such as `llmfleet sim calibrate --fleet`, reads a simulated fleet the same way.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import heapq
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram
from tokenizers import Tokenizer

from llmfleet.core.clock import Clock, RealClock
from llmfleet.core.sampling import SamplingParams
from llmfleet.engine.client import Completion, CompletionChunk
from llmfleet.engine.detokenize import TextStream
from llmfleet.engine.errors import EngineRequestError, EngineUnavailable
from llmfleet.engine.metrics import EngineLoad
from llmfleet.engine.stops import StopChecker
from llmfleet.sim.costmodel import CostModel

VOCAB = 4096
EOS_TOKEN = 2
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
_SYLLABLES = ["a", "re", "to", "ki", "mu", "so", "ne", "li"]


def _hash(history: Sequence[int]) -> int:
    digest = hashlib.blake2b(memoryview(bytes(str(tuple(history[-64:])), "ascii")), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def next_token(history: Sequence[int]) -> int:
    """Deterministic 'model': the next token is a hash of the whole history."""
    return 4 + _hash(history) % (VOCAB - 4)


def word(token: int) -> str:
    """The text of a simulated token: syllables, so stop strings can span tokens ("ki to")."""
    return "".join(_SYLLABLES[(token >> (3 * k)) & 7] for k in range(4))


@functools.cache
def simulated_tokenizer() -> Tokenizer:
    """The simulated model's tokenizer: one word per id, joined by spaces when decoded."""
    from tokenizers import AddedToken, models

    vocab = {name: i for i, name in enumerate(SPECIAL)} | {word(i): i for i in range(len(SPECIAL), VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.add_special_tokens([AddedToken(name, special=True) for name in SPECIAL])
    return tok


@dataclass
class _Seq:
    history: list[int]
    remaining: int
    out: asyncio.Queue[CompletionChunk | BaseException | None]
    priority: int
    text: TextStream
    stops: StopChecker
    sampling: SamplingParams = field(default_factory=SamplingParams)
    ignore_eos: bool = False
    generated: int = 0
    aborted: bool = False
    arrived_s: float = 0.0
    scheduled_s: float = 0.0  # when it left the waiting queue for a batch
    first_token_s: float = 0.0
    last_token_s: float = 0.0

    def min_tokens(self) -> int:
        return int(self.sampling.extra.get("min_tokens", 0) or 0)


@dataclass
class SimulatedEngineConfig:
    max_num_seqs: int = 32
    max_model_len: int = 2048
    step_base_s: float = 0.010
    step_per_seq_s: float = 0.0005
    prefill_per_token_s: float = 0.00002
    priority_scheduling: bool = True  # as llmfleet starts vLLM (`--scheduling-policy priority`)
    kv_tokens: int = 65536
    eos_every: int = 0  # ~1 in this many tokens is EOS (0: never), unless ignore_eos
    name: str = "sim"
    extra: dict[str, float] = field(default_factory=dict)

    def cost_model(self) -> CostModel:
        """This engine's timing as a simulator cost model (`--cost-model simulated-engine`).

        Every step pays `step_base_s` once, whether it decodes, prefills or both: the prefill
        knots start at it and the overlap takes it off again when both run. A step here also
        charges `step_per_seq_s` for each sequence it prefills, which the simulator's decode
        term leaves out."""
        base, per_token = self.step_base_s, self.prefill_per_token_s
        return CostModel(
            name=f"simulated-engine:{self.name}",
            prefill_knots_tokens=(0.0, 1e6),
            prefill_knots_s=(base, base + per_token * 1e6),
            decode_base_s=base,
            decode_per_seq_s=self.step_per_seq_s,
            decode_per_ctx_token_s=0.0,
            overlap_s=base,
            kv_capacity_tokens=self.kv_tokens,
            source="the simulated engine's config",
        )


class SimulatedEngineMetrics:
    """vLLM's per-request histograms, with vLLM's names and meanings, on their own registry."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = dict(labelnames=["model_name"], registry=self.registry)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Arrival to the first token", **labels).labels(model_name)  # type: ignore[arg-type]
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Between a request's tokens", **labels).labels(model_name)  # type: ignore[arg-type]
        self.decode = Histogram(
            "vllm:request_decode_time_seconds", "A request's first token to its last", **labels  # type: ignore[arg-type]
        ).labels(model_name)
        self.prefill = Histogram(
            "vllm:request_prefill_time_seconds", "A request's scheduling to its first token", **labels  # type: ignore[arg-type]
        ).labels(model_name)

    def token(self, seq: _Seq, now: float, last: bool) -> None:
        if seq.generated == 1:
            seq.first_token_s = now
            self.ttft.observe(now - seq.arrived_s)
            self.prefill.observe(now - seq.scheduled_s)
        else:
            self.itl.observe(now - seq.last_token_s)
        seq.last_token_s = now
        if last:
            self.decode.observe(now - seq.first_token_s)


class SimulatedEngineClient:
    """An in-process engine; `base_url` is ``sim://<name>``; `registry`: its vLLM-named metrics."""

    def __init__(self, config: SimulatedEngineConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or SimulatedEngineConfig()
        self.clock = clock or RealClock()
        self.base_url = f"sim://{self.config.name}"
        self._waiting: list[tuple[int, int, _Seq]] = []
        self._running: list[_Seq] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._down = False
        self.preemptions = 0
        self.generation_tokens = 0
        self.metrics = SimulatedEngineMetrics(self.config.name)
        self.registry = self.metrics.registry

    # --- failure injection for tests --------------------------------------------------------------
    def kill(self) -> None:
        """Make the engine die: every in-flight stream fails, and new calls are refused."""
        self._down = True
        for seq in self._running + [s for _, _, s in self._waiting]:
            seq.out.put_nowait(EngineUnavailable("simulated engine died", url=self.base_url))
        self._running.clear()
        self._waiting.clear()

    # --- EngineClient interface --------------------------------------------------------------------
    async def __aenter__(self) -> SimulatedEngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None

    async def health(self) -> bool:
        return not self._down

    async def model(self) -> str:
        return self.config.name

    async def max_model_len(self) -> int:
        self._check_up()
        return self.config.max_model_len

    async def tokenize(self, text: str) -> list[int]:
        self._check_up()
        return _encode(text)

    async def tokenizer(self) -> Tokenizer:
        return simulated_tokenizer()

    async def tokenize_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """The simulated model's chat template: one "role: content" line each, then "assistant:"."""
        self._check_up()
        return _encode("".join(f"{role}: {content}\n" for role, content in messages) + "assistant:")

    async def load(self) -> EngineLoad:
        self._check_up()
        used = sum(len(s.history) for s in self._running)
        return EngineLoad(
            kv_capacity_tokens=self.config.kv_tokens,
            block_size=16,
            running=len(self._running),
            waiting=len(self._waiting),
            kv_cache_usage=min(1.0, used / self.config.kv_tokens),
            preemptions=float(self.preemptions),
            generation_tokens=float(self.generation_tokens),
        )

    async def complete(
        self,
        prompt: str | Sequence[int],
        max_tokens: int,
        *,
        ignore_eos: bool = False,
        priority: int | None = None,
        sampling: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> Completion:
        ids: list[int] = []
        text: list[str] = []
        finish = None
        async for chunk in self.stream(prompt, max_tokens, ignore_eos=ignore_eos, priority=priority, sampling=sampling):
            ids.extend(chunk.token_ids)
            text.append(chunk.text)
            finish = chunk.finish_reason or finish
        prompt_ids = _encode(prompt)
        return Completion(tuple(ids), "".join(text), finish, len(prompt_ids), len(ids), tuple(prompt_ids))

    async def stream(
        self,
        prompt: str | Sequence[int],
        max_tokens: int,
        *,
        ignore_eos: bool = False,
        priority: int | None = None,
        sampling: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[CompletionChunk]:
        self._check_up()
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        ids = _encode(prompt)
        if not ids:
            raise ValueError("a prompt of token ids must not be empty")
        if len(ids) + 1 > self.config.max_model_len:
            raise EngineRequestError(
                f"This model's maximum context length is {self.config.max_model_len} tokens",
                status=400,
                url=self.base_url,
            )
        remaining = min(max_tokens, self.config.max_model_len - len(ids))
        sampling = sampling or SamplingParams()
        stops = StopChecker(sampling.stop, int(sampling.extra.get("min_tokens", 0) or 0), sampling.include_stop_str_in_output)
        seq = _Seq(history=list(ids), remaining=remaining, out=asyncio.Queue(), priority=priority or 0,
                   text=TextStream.resume(simulated_tokenizer(), ids), stops=stops, sampling=sampling,
                   ignore_eos=ignore_eos, arrived_s=self.clock.now())  # fmt: skip
        key = seq.priority if self.config.priority_scheduling else 0
        heapq.heappush(self._waiting, (key, next(self._seq), seq))
        self._ensure_loop()
        try:
            while True:
                item = await seq.out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            seq.aborted = True  # a disconnected client aborts the request, as in vLLM

    # --- the engine loop ------------------------------------------------------------------------------
    def _check_up(self) -> None:
        if self._down:
            raise EngineUnavailable("simulated engine is down", url=self.base_url)

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    async def _run(self) -> None:
        cfg = self.config
        while not self._down:
            self._running = [s for s in self._running if not s.aborted]
            prefill = 0
            while self._waiting and len(self._running) < cfg.max_num_seqs:
                _, _, seq = heapq.heappop(self._waiting)
                if not seq.aborted:
                    seq.scheduled_s = self.clock.now()
                    self._running.append(seq)
                    prefill += len(seq.history)
            if not self._running:
                self._wake.clear()
                await self._wake.wait()
                continue
            step = cfg.step_base_s + cfg.step_per_seq_s * len(self._running) + cfg.prefill_per_token_s * prefill
            await self.clock.sleep(step)
            now = self.clock.now()
            still: list[_Seq] = []
            for seq in self._running:
                if seq.aborted:
                    continue
                token, finish = self._sample(seq)
                seq.history.append(token)
                seq.generated += 1
                seq.remaining -= 1
                self.generation_tokens += 1
                # As vLLM: a stop token's text is left out; stop strings cut the text.
                stop_token = finish == "stop" and not (seq.sampling.include_stop_str_in_output and token != EOS_TOKEN)
                if seq.stops.update(["" if stop_token else seq.text.step(token)]) is not None:
                    finish = "stop"
                if finish is None and seq.remaining <= 0:
                    finish = "length"
                self.metrics.token(seq, now, last=finish is not None)
                seq.out.put_nowait(CompletionChunk((token,), seq.stops.next_text(finish is not None), finish))
                if finish is not None:
                    seq.out.put_nowait(None)
                else:
                    still.append(seq)
            self._running = still

    def _sample(self, seq: _Seq) -> tuple[int, str | None]:
        """The next token and whether it stops the request (EOS or a stop token id), with vLLM's
        min_tokens: until then, stop tokens cannot be sampled at all."""
        stop_ids = set(seq.sampling.stop_token_ids) | ({EOS_TOKEN} if not seq.ignore_eos else set())
        eos = self.config.eos_every and not seq.ignore_eos and _hash(seq.history) % self.config.eos_every == 0
        token = EOS_TOKEN if eos else next_token(seq.history)
        salt = 0
        while seq.generated < seq.min_tokens() and token in stop_ids:
            salt += 1
            token = next_token([*seq.history, -salt])
        return token, "stop" if token in stop_ids else None


def _encode(prompt: str | Sequence[int]) -> list[int]:
    if isinstance(prompt, str):
        return [4 + b for b in prompt.encode("utf-8")]
    return [int(t) for t in prompt]
