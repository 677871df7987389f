"""Online learning: record served requests, retrain in the background, hot-swap the model.

The live dispatcher needs four calls:

    ranker = OnlineRanker(clock, initial=load_predictor(path_or_None))   # 1. at start-up
    task = asyncio.create_task(ranker.run())                              # 2. background retrainer
    estimates = ranker.predict(items)                                     # 3. at admission
    ranker.record_completion(prompt_text, prompt_tokens, output_tokens,   # 4. when a request ends
                             output_text=text)                            #    (its answer, if kept)
    (ranker.stop() / task.cancel() at shutdown)

* Memory is bounded: `CompletionRecorder` keeps at most `capacity` completions (reservoir
  sampling over all history, or a ring buffer of the most recent with `policy="recent"`),
  each prompt cut to `max_prompt_chars`.
* Retraining runs every `retrain_every_s` seconds of the injected `Clock`, in a worker thread
  (`asyncio.to_thread`), so the event loop keeps serving while LightGBM fits.
* The swap is one attribute assignment: `predict` reads `self._live` once and never takes a
  lock, so readers never block and always see a whole model, old or new.
* Cold start: until `min_examples` completions are recorded, prompt length orders requests
  and the length estimate is the median/p90 of what has been observed.
* Remaining length: completions recorded with their answer text also train the remaining-length
  model (`llmfleet.ranker.remaining`), so once enough answers are in, the model swapped in
  re-estimates at slice boundaries from the served text itself. Answers longer than
  `max_output_chars` are kept without their text.
* Prometheus: pass the dispatcher's `CollectorRegistry` as `registry=` to export
  `llmfleet_ranker_model_version`, `_recorded_completions_total`, `_sample_size`,
  `_retrains_total{outcome}` and `_retrain_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llmfleet.core.clock import Clock
from llmfleet.core.prediction import LengthEstimate, LengthPredictor, PredictionInput
from llmfleet.ranker.baseline import PromptLengthPredictor
from llmfleet.ranker.data import Example

log = logging.getLogger(__name__)


class OnlineRankerMetrics:
    """The online ranker's Prometheus metrics, on the registry it is given."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.version = Gauge("llmfleet_ranker_model_version", "Models hot-swapped in since start (0 = cold start)",
                             registry=r)
        self.recorded = Counter("llmfleet_ranker_recorded_completions", "Completions recorded for retraining",
                                registry=r)
        self.sample = Gauge("llmfleet_ranker_sample_size", "Completions held in the bounded training sample",
                            registry=r)
        self.retrains = Counter("llmfleet_ranker_retrains", "Retrain attempts by outcome", ["outcome"], registry=r)
        self.retrain_seconds = Histogram("llmfleet_ranker_retrain_seconds", "Wall seconds per successful retrain",
                                         buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=r)


@dataclass(frozen=True)
class Completion:
    prompt_text: str
    prompt_tokens: int
    output_tokens: int
    output_text: str | None = None  # the answer, for the remaining-length model


class CompletionRecorder:
    """A bounded, thread-safe sample of completed requests."""

    def __init__(
        self,
        capacity: int = 5000,
        policy: str = "reservoir",
        max_prompt_chars: int = 8192,
        seed: int = 0,
        max_output_chars: int = 16384,
    ):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if policy not in ("reservoir", "recent"):
            raise ValueError("policy must be 'reservoir' or 'recent'")
        self.capacity = capacity
        self.policy = policy
        self.max_prompt_chars = max_prompt_chars
        # A longer answer is kept without its text: the remaining-length model counts what is left
        # in the text itself, so a cut answer would teach it wrong counts.
        self.max_output_chars = max_output_chars
        self._items: list[Completion] | deque[Completion] = [] if policy == "reservoir" else deque(maxlen=capacity)
        self._seen = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def record(self, prompt_text: str, prompt_tokens: int, output_tokens: int, output_text: str | None = None) -> None:
        if not isinstance(prompt_text, str) or not prompt_text.strip():
            raise ValueError("record_completion needs the prompt text (non-empty)")
        if output_tokens < 0:
            raise ValueError("output_tokens must be >= 0")
        answer = output_text if output_text and len(output_text) <= self.max_output_chars else None
        item = Completion(prompt_text[: self.max_prompt_chars], int(prompt_tokens), int(output_tokens), answer)
        with self._lock:
            self._seen += 1
            if self.policy == "recent":
                self._items.append(item)
            elif len(self._items) < self.capacity:
                self._items.append(item)
            else:
                j = self._rng.randrange(self._seen)  # Algorithm R: a uniform sample of everything seen
                if j < self.capacity:
                    assert isinstance(self._items, list)
                    self._items[j] = item

    @property
    def seen(self) -> int:
        return self._seen

    def __len__(self) -> int:
        return len(self._items)

    def snapshot(self) -> list[Completion]:
        with self._lock:
            return list(self._items)


def make_trainer(
    embedder_kind: str = "static", embedder: Any = None, **options: Any
) -> Callable[[list[Example]], LengthPredictor]:
    """The default retrain step: `train_ranker` with no hold-out, one shared token table."""
    state: dict[str, Any] = {"embedder": embedder}

    def train(examples: list[Example]) -> LengthPredictor:
        from llmfleet.ranker.train import TrainOptions, make_embedder, train_ranker

        if state["embedder"] is None and embedder_kind != "none":  # build once, share across retrains
            state["embedder"] = make_embedder(embedder_kind, progress=False)
        opts = TrainOptions(embedder=embedder_kind, holdout_fraction=0.0, **{"progress": False, **options})
        return train_ranker(examples, opts, embedder=state["embedder"]).ranker

    return train


class OnlineRanker:
    """A `LengthPredictor` that learns from served traffic and swaps in new models live."""

    name = "ltr-online"

    def __init__(
        self,
        clock: Clock,
        initial: LengthPredictor | None = None,
        retrain_every_s: float = 600.0,
        min_examples: int = 200,
        recorder: CompletionRecorder | None = None,
        trainer: Callable[[list[Example]], LengthPredictor] | None = None,
        embedder: str = "static",
        registry: Any = None,
    ) -> None:
        self.clock = clock
        self.metrics = OnlineRankerMetrics(registry)
        self.retrain_every_s = retrain_every_s
        self.min_examples = min_examples
        self.recorder = recorder or CompletionRecorder()
        self._trainer = trainer or make_trainer(embedder)
        self._live: LengthPredictor = initial or PromptLengthPredictor()
        self._train_lock = threading.Lock()
        self._stop = asyncio.Event()
        self.version = 0  # how many models have been swapped in
        self.trained_on_seen = 0  # recorder.seen at the last successful retrain
        self.last_error: str | None = None
        self.last_retrain_at: float | None = None

    @property
    def live(self) -> LengthPredictor:
        return self._live

    @property
    def reestimates(self) -> bool:
        return bool(getattr(self._live, "reestimates", False))

    def predict(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]:
        live = self._live  # one read: the whole call uses one model even if a swap lands meanwhile
        return live.predict(items)

    def record_completion(
        self, prompt_text: str, prompt_tokens: int, output_tokens: int, output_text: str | None = None
    ) -> None:
        self.recorder.record(prompt_text, prompt_tokens, output_tokens, output_text)
        self.metrics.recorded.inc()
        self.metrics.sample.set(len(self.recorder))

    def retrain_now(self) -> bool:
        """Train on the recorded sample and swap the model in; False if skipped or failed.

        Called from the background loop's worker thread, or directly (tests, admin endpoints).
        """
        if not self._train_lock.acquire(blocking=False):
            return False  # a retrain is already running
        try:
            sample = self.recorder.snapshot()
            seen = self.recorder.seen
            if len(sample) < self.min_examples:
                if sample and isinstance(self._live, PromptLengthPredictor):
                    self._live = PromptLengthPredictor.from_lengths([c.output_tokens for c in sample])
                self.metrics.retrains.labels(outcome="too_few_examples").inc()
                return False
            examples = [Example(c.prompt_text, c.output_tokens, "served", output=c.output_text) for c in sample]
            started = time.perf_counter()
            try:
                model = self._trainer(examples)
            except Exception as exc:  # keep serving the old model; a bad batch must not take scheduling down
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("ranker retrain failed; keeping the live model")
                self.metrics.retrains.labels(outcome="failed").inc()
                return False
            self._live = model  # the hot swap
            self.version += 1
            self.trained_on_seen = seen
            self.last_error = None
            self.last_retrain_at = self.clock.now()
            self.metrics.version.set(self.version)
            self.metrics.retrains.labels(outcome="swapped").inc()
            self.metrics.retrain_seconds.observe(time.perf_counter() - started)
            return True
        finally:
            self._train_lock.release()

    async def run(self) -> None:
        """Retrain every `retrain_every_s` clock seconds until `stop()`; training runs off the loop."""
        while not self._stop.is_set():
            await self.clock.sleep(self.retrain_every_s)
            if self._stop.is_set():
                break
            if self.recorder.seen > self.trained_on_seen:
                await asyncio.to_thread(self.retrain_now)

    def stop(self) -> None:
        self._stop.set()
