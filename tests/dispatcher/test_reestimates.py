"""Re-estimation at slice boundaries: after each slice the dispatcher asks the predictor again,
with the text generated so far, off the event loop, and the policy ranks by the fresh estimate."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from llmfleet.client import DispatcherClient
from llmfleet.core.config import SchedulingConfig
from llmfleet.core.prediction import LengthEstimate, PredictionInput
from llmfleet.core.scheduling import RequestState
from llmfleet.dispatcher import serve_dispatcher
from llmfleet.policies.llmfleet_default import LLMFleetDefault


class Reading:
    """A predictor double that reads generated text (as a remaining-length model does)."""

    name = "reading"
    reestimates = True

    def __init__(self) -> None:
        self.calls: list[tuple[int, str | None, str]] = []  # (generated tokens, text, thread)

    def predict(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]:
        for it in items:
            self.calls.append((it.generated_tokens, it.generated_text, threading.current_thread().name))
        return [LengthEstimate(1.0, it.generated_tokens + 7.0, it.generated_tokens + 20.0, it.generated_tokens)
                for it in items]  # fmt: skip


async def test_each_slice_boundary_re_estimates_from_the_text_so_far(fake_pods) -> None:
    predictor = Reading()
    handle = await serve_dispatcher(pods={f"p{i}": p.address for i, p in enumerate(fake_pods)},
                                    config=SchedulingConfig(policy="llmfleet", slice_tokens=4), predictor=predictor)  # fmt: skip
    try:
        await handle.wait_ready(2, timeout_s=10)
        async with DispatcherClient(handle.address) as c:
            g = await c.generate(prompt="tell me more", max_tokens=20, timeout=20)
        assert len(g.token_ids) == 20 and g.usage.slices == 5
        again = [(k, text, thread) for k, text, thread in predictor.calls if k > 0]
        assert [k for k, _, _ in again] == [4, 8, 12, 16], "one re-estimate per boundary, with the tokens so far"
        assert all(text and text == g.text[: len(text)] for _, text, _ in again), "the text the client has seen"
        assert all(thread != threading.main_thread().name for _, _, thread in again), "off the event loop"
        metrics = handle.dispatcher.metrics.registry.get_sample_value("llmfleet_dispatcher_reestimates_total")
        assert metrics == 4
    finally:
        await handle.stop()


async def _one_pod_slices_of_4(fake_pods, predictor):
    handle = await serve_dispatcher(pods={"p": fake_pods[0].address}, predictor=predictor,
                                    config=SchedulingConfig(policy="llmfleet", slice_tokens=4))  # fmt: skip
    await handle.wait_ready(1, timeout_s=10)
    return handle


async def test_no_re_estimates_for_fixed_lengths_or_predictors_that_cannot_read(fake_pods) -> None:
    predictor = Reading()
    handle = await _one_pod_slices_of_4(fake_pods, predictor)
    try:
        async with DispatcherClient(handle.address) as c:
            await c.generate(prompt="exactly", max_tokens=12, ignore_eos=True, timeout=20)
        assert predictor.calls == [], "ignore_eos: the length is known, nothing is predicted"
    finally:
        await handle.stop()
    Reading.reestimates = False
    try:
        plain = await serve_dispatcher(pods={"p": fake_pods[0].address}, predictor=Reading(),
                                       config=SchedulingConfig(policy="llmfleet", slice_tokens=4))  # fmt: skip
        assert plain.dispatcher.reestimator is None
        await plain.stop()
    finally:
        Reading.reestimates = True


class Learning(Reading):
    """An online ranker double: it cannot read generated text until it has recorded an answer."""

    name = "learning"

    def __init__(self) -> None:
        super().__init__()
        self.recorded: list[tuple[str, int, str | None]] = []

    @property  # type: ignore[override]
    def reestimates(self) -> bool:
        return bool(self.recorded)

    def record_completion(self, prompt_text, prompt_tokens, output_tokens, output_text=None) -> None:
        self.recorded.append((prompt_text, output_tokens, output_text))


async def test_an_online_ranker_starts_re_estimating_once_it_has_learned(fake_pods) -> None:
    predictor = Learning()
    handle = await _one_pod_slices_of_4(fake_pods, predictor)
    try:
        assert handle.dispatcher.reestimator is not None, "it may learn to: the re-estimator waits"
        async with DispatcherClient(handle.address) as c:
            first = await c.generate(prompt="first question", max_tokens=12, timeout=20)
            assert [k for k, _, _ in predictor.calls if k > 0] == [], "nothing learned yet: no re-estimates"
            assert predictor.recorded == [], "cut by max_tokens: not a natural length, nothing to learn"
            assert len(first.token_ids) == 12
            fake_pods[0].servicer.faults.eos_at = 7  # the next answer ends by itself after 7 tokens
            stopped = await c.generate(prompt="second question", max_tokens=12, timeout=20)
            fake_pods[0].servicer.faults.eos_at = None
            assert stopped.finish_reason == "stop" and len(stopped.token_ids) == 7
            assert predictor.recorded == [("second question", len(stopped.token_ids), stopped.text)], "with its answer"
            predictor.calls.clear()
            await c.generate(prompt="third question", max_tokens=12, timeout=20)
        assert [k for k, _, _ in predictor.calls if k > 0] == [4, 8], "now every boundary is re-estimated"
    finally:
        await handle.stop()


@pytest.mark.parametrize(
    "generated, estimate, remaining",
    [
        (0, None, 128.0),  # no estimate: the fallback length
        (10, LengthEstimate(0, 100.0, 200.0), 90.0),  # prompt-only estimate, still ahead
        (80, LengthEstimate(0, 100.0, 200.0), 80.0),  # past half of it: the growth prior (2x) takes over
        (80, LengthEstimate(0, 90.0, 120.0, at_generated=80), 10.0),  # a re-estimate read the text: trusted
        (85, LengthEstimate(0, 90.0, 120.0, at_generated=80), 5.0),  # a little stale: what it said is left
        (95, LengthEstimate(0, 90.0, 120.0, at_generated=80), 1.0),  # overrun: never below one token
    ],
)
def test_the_default_policy_ranks_by_a_re_estimate_as_given(generated, estimate, remaining) -> None:
    req = RequestState(request_id="r", seq=0, arrival_s=0.0, prompt_tokens=10, generated_tokens=generated, estimate=estimate)
    assert LLMFleetDefault().remaining(req) == pytest.approx(remaining)


async def test_the_drift_guard_judges_requests_that_end_naturally_and_exports_tau(fake_pods) -> None:
    from llmfleet.ranker.drift import GuardedPredictor

    for pod in fake_pods:
        pod.servicer.faults.eos_at = 6  # every request ends with EOS after 6 tokens: a natural length
    guard = GuardedPredictor(Reading(), window=50, min_samples=2)
    handle = await serve_dispatcher(pods={f"p{i}": p.address for i, p in enumerate(fake_pods)}, predictor=guard,
                                    config=SchedulingConfig(policy="llmfleet", slice_tokens=4))  # fmt: skip
    try:
        await handle.wait_ready(2, timeout_s=10)
        async with DispatcherClient(handle.address) as c:
            for prompt in ("a", "bb", "ccc"):
                g = await c.generate(prompt=prompt, max_tokens=20, timeout=20)
                assert g.finish_reason == "stop" and len(g.token_ids) == 6
            await c.generate(prompt="cut short", max_tokens=3, timeout=20)  # "length": no natural length
        assert len(guard.window) == 3, "the three natural endings were judged, the capped one was not"
        assert not guard._pending, "nothing left waiting for an outcome"
        registry = handle.dispatcher.metrics.registry
        assert registry.get_sample_value("llmfleet_dispatcher_ranker_tau") == guard.tau
        assert registry.get_sample_value("llmfleet_dispatcher_ranker_fallback") in (0.0, 1.0)
    finally:
        await handle.stop()
