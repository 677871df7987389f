"""The predictions the live dispatcher makes, for the simulator replaying a window the fleet served.

A simulator compared with the live fleet (`bench/sim_fidelity.py`) must rank the requests as the
dispatcher ranked them, or the comparison measures two predictors instead of the model. The
simulator's trace requests carry lengths, not text, so its usual stand-in is a noise model of a
chosen quality. Neither case the fleet serves is that:

* a request that fixes its own length (`ignore_eos` with `max_tokens`) gets the exact estimate,
  and no predictor is asked (`ExactPredictor`, the dispatcher's `exact_estimate`);
* a request whose length is hidden from the scheduler (an EOS ends it, as in the e2e benchmark)
  gets the dispatcher's own predictor, asked about the request's prompt text, which the trace
  does not carry (`PromptTextPredictor`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from llmfleet.core.prediction import LengthEstimate, LengthPredictor, PredictionInput, exact_estimate


class ExactPredictor:
    """Each request's true length as its estimate, as the dispatcher estimates a fixed-length request."""

    name = "exact"
    reestimates = False  # a fixed length needs no second look

    def predict(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]:
        missing = [it.request_id for it in items if it.true_output_tokens is None]
        if missing:
            raise ValueError(f"request {missing[0]!r}: an exact estimate needs the true length (a simulator's request)")
        return [exact_estimate(int(it.true_output_tokens)) for it in items]  # type: ignore[arg-type]


class PromptTextPredictor:
    """`inner` asked about each request with its prompt text, looked up by request id, and without
    its true length: what the dispatcher asks its predictor at admission.

    It does not re-estimate: a live re-estimate reads the text generated so far, which a simulator
    does not produce, so policies that slice would see fewer re-estimates here than live."""

    reestimates = False

    def __init__(self, inner: LengthPredictor, texts: Mapping[str, str]) -> None:
        self.inner = inner
        self.texts = texts
        self.name = f"{inner.name} on prompt text"

    def predict(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]:
        missing = [it.request_id for it in items if it.request_id not in self.texts]
        if missing:
            raise KeyError(f"no prompt text for request {missing[0]!r}")
        return self.inner.predict(
            [replace(it, prompt_text=self.texts[it.request_id], true_output_tokens=None) for it in items]
        )
