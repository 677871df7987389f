"""What the dispatcher does with length predictions after admission: re-estimates at slice
boundaries (made off the event loop), and learning from how requests really ended.

Re-estimates.

When a slice ends and its request goes back to the queue, the dispatcher knows the text
generated so far; a predictor that can read it (`reestimates` is true: a learned ranker with a
remaining-length model) re-estimates what is left. The request is not held for it: it stays
schedulable with its previous estimate, and the new one replaces it when the worker thread
answers (batched, so one model call serves every boundary that fell in the same moment). The
policies then rank by the fresher estimate at their next decision.

Learning. A request that ends naturally (EOS or a stop, not cut by max_tokens or resumed) has a
true length: the drift guard judges the ranker on it and an online ranker records it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from llmfleet.core.prediction import LengthPredictor, PredictionInput
from llmfleet.dispatcher.metrics import DispatcherMetrics
from llmfleet.dispatcher.model import LiveRequest

log = logging.getLogger(__name__)
BATCH = 32


def reestimates(predictor: LengthPredictor) -> bool:
    return bool(getattr(predictor, "reestimates", False))


def learns(predictor: LengthPredictor) -> bool:
    """An online ranker: it records completions, and may learn to re-estimate later."""
    return hasattr(predictor, "record_completion")


class Reestimator:
    def __init__(self, predictor: LengthPredictor, metrics: DispatcherMetrics, on_update: Callable[[], None]) -> None:
        self.predictor = predictor
        self.metrics = metrics
        self.on_update = on_update
        self.pending: dict[str, LiveRequest] = {}
        self._wake = asyncio.Event()

    def request(self, req: LiveRequest) -> None:
        """Ask for a re-estimate of `req` (a later ask for the same request replaces this one)."""
        if req.done or req.spec.ignore_eos or not req.spec.prompt_text or not req.generated:
            return  # a fixed length, or nothing new to read
        if not reestimates(self.predictor):
            return  # not (or not yet: an online ranker still learning, a guard in fallback)
        self.pending[req.request_id] = req
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                batch = list(self.pending.values())[:BATCH]
                for r in batch:
                    self.pending.pop(r.request_id, None)
                await self._estimate(batch)

    async def _estimate(self, batch: list[LiveRequest]) -> None:
        items = [
            PredictionInput(r.request_id, len(r.prompt_ids), r.spec.prompt_text,
                            generated_tokens=len(r.generated), generated_text=r.stops.text)
            for r in batch
        ]  # fmt: skip
        started = time.perf_counter()
        try:
            estimates = await asyncio.to_thread(self.predictor.predict, items)
        except Exception:  # a broken model must not stop serving: keep the previous estimates
            log.exception("remaining-length re-estimate failed; keeping the previous estimates")
            return
        self.metrics.reestimate_seconds.observe(time.perf_counter() - started)
        for req, est, item in zip(batch, estimates, items, strict=True):
            # Only if nothing newer was asked meanwhile, and the request still runs.
            if not req.done and req.request_id not in self.pending and len(req.generated) >= item.generated_tokens:
                req.estimate = est
                req.touch()
                self.metrics.reestimates.inc()
        self.on_update()


def forget_estimate(predictor: LengthPredictor, req: LiveRequest) -> None:
    """The request ended without a natural length: the drift guard will never judge it."""
    forget = getattr(predictor, "forget", None)
    if forget is not None:
        forget(req.request_id)


def learn_from(predictor: LengthPredictor, metrics: DispatcherMetrics, req: LiveRequest, reason: str) -> None:
    """Judge the ranker on a finished request (drift guard, with its gauges) and feed it to an
    online ranker, if there is one."""
    natural = reason == "stop" and not req.spec.ignore_eos and req.resumed_tokens == 0
    observe = getattr(predictor, "observe", None)
    if observe is not None:
        if natural:
            observe(req.request_id, len(req.generated))
            metrics.ranker_tau.set(getattr(predictor, "tau", None) or 0.0)
            metrics.ranker_baseline_tau.set(getattr(predictor, "baseline_tau", None) or 0.0)
            metrics.ranker_fallback.set(1.0 if getattr(predictor, "fallback", False) else 0.0)
        else:
            forget_estimate(predictor, req)
    record = getattr(predictor, "record_completion", None)
    # A resumed request's generated tokens include what the client brought: still its true length.
    if record is None or reason != "stop" or req.spec.ignore_eos or not req.spec.prompt_text:
        return
    try:  # the answer's text too: an online ranker learns the remaining length from it
        record(req.spec.prompt_text, len(req.prompt_ids), len(req.generated), output_text=req.stops.text)
    except Exception:  # learning is best effort; serving must go on
        log.exception("online ranker could not record a completion")
