"""The mechanism with a FakeClock: deadlines, policy order with length predictions, preemption."""

from __future__ import annotations

import asyncio

import pytest

from llmfleet.core.clock import FakeClock, wait_for_condition
from llmfleet.core.scheduling import ALL_REMAINING, Assignment, Decision, Preempt, SchedulerView
from llmfleet.dispatcher import Dispatcher, DispatcherSettings
from llmfleet.dispatcher.model import (
    FailEvent,
    FinishEvent,
    GenerateSpec,
    InvalidRequest,
    NoEngine,
    PodLimits,
    TokenEvent,
)
from llmfleet.policies.registry import make_policy
from tests.dispatcher.fake_sidecar import reference, start_fake_pod


async def _drain(req) -> tuple[list[int], object]:
    ids: list[int] = []
    while True:
        ev = await req.events.get()
        if isinstance(ev, TokenEvent):
            ids += ev.token_ids
        else:
            return ids, ev


async def _dispatcher(policy, pods, **settings) -> Dispatcher:
    d = Dispatcher(policy, clock=FakeClock(1000.0), settings=DispatcherSettings(**settings))
    await d.start()
    await d.set_pods({f"p{i}": p.address for i, p in enumerate(pods)})
    await wait_for_condition(lambda: len(d.healthy_pods()) == len(pods), 10, what="pods healthy")
    return d


async def test_deadline_follows_the_dispatcher_clock():
    pod = await start_fake_pod(token_delay_s=0.02)
    d = await _dispatcher(make_policy("fcfs-rr"), [pod])
    try:
        req = await d.submit(GenerateSpec(max_tokens=500, prompt_ids=(1, 2), deadline_s=5.0))
        await wait_for_condition(lambda: len(req.generated) > 0, 10)
        d.clock.advance(4.9)  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
        assert not req.done
        d.clock.advance(0.2)  # type: ignore[attr-defined]
        ids, end = await _drain(req)
        assert isinstance(end, FailEvent) and end.code == "DEADLINE_EXCEEDED"
        await wait_for_condition(lambda: pod.servicer.active == 0, 10, what="slice cancelled on the pod")
    finally:
        await d.stop(0)
        await pod.stop()


async def test_held_queue_serves_short_predicted_requests_first():
    """`ltr` holds requests at the dispatcher and releases the shortest predicted first."""
    pod = await start_fake_pod(token_delay_s=0.005, max_num_seqs=1)
    d = await _dispatcher(make_policy("ltr"), [pod])
    try:
        blocker = await d.submit(GenerateSpec(max_tokens=40, prompt_ids=(9,), ignore_eos=True))
        await wait_for_condition(lambda: blocker.request_id in d.running, 10)
        long = await d.submit(GenerateSpec(max_tokens=30, prompt_ids=(1,), ignore_eos=True))
        short = await d.submit(GenerateSpec(max_tokens=3, prompt_ids=(2,), ignore_eos=True))
        order: list[str] = []

        async def finish(req) -> None:
            ids, end = await _drain(req)
            assert isinstance(end, FinishEvent) and len(ids) == req.max_tokens
            order.append(req.request_id)

        await asyncio.gather(finish(blocker), finish(long), finish(short))
        assert order == [blocker.request_id, short.request_id, long.request_id]
    finally:
        await d.stop(0)
        await pod.stop()


class PreemptForPriority:
    """Test policy: run everything to completion on p0, but preempt for a more important request."""

    name = "test-preempt"

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        out: list[Decision] = []
        if view.queue and view.running:
            top = max(view.queue, key=lambda r: r.priority)
            for r in view.running:
                if r.priority < top.priority:
                    out.append(Preempt(r.request_id, r.pod_id or "p0"))
        pod = view.pods[0]
        busy = len(view.running) - sum(isinstance(x, Preempt) for x in out)
        for r in sorted(view.queue, key=lambda r: -r.priority)[: max(0, pod.max_running - busy)]:
            out.append(Assignment(r.request_id, pod.pod_id, ALL_REMAINING))
        return tuple(out)


async def test_preempted_requests_resume_with_their_tokens():
    pod = await start_fake_pod(token_delay_s=0.01, max_num_seqs=1)
    d = await _dispatcher(PreemptForPriority(), [pod])
    try:
        low = await d.submit(GenerateSpec(max_tokens=60, prompt_ids=(3, 4), ignore_eos=True))
        await wait_for_condition(lambda: len(low.generated) >= 5, 10)
        high = await d.submit(GenerateSpec(max_tokens=5, prompt_ids=(7,), ignore_eos=True, priority=9))
        high_ids, high_end = await _drain(high)
        low_ids, low_end = await _drain(low)
        assert isinstance(high_end, FinishEvent) and high_ids == reference([7], 5)
        assert isinstance(low_end, FinishEvent) and low_ids == reference([3, 4], 60)
        assert low_end.usage.slices == 2 and d.metrics.preemptions._value.get() == 1
    finally:
        await d.stop(0)
        await pod.stop()


class ConstantPredictor:
    name = "constant"

    def __init__(self, tokens: float) -> None:
        self.tokens = tokens

    def predict(self, items):
        from llmfleet.core.prediction import LengthEstimate

        return [LengthEstimate(self.tokens, self.tokens, self.tokens) for _ in items]


async def test_online_ranker_learns_from_naturally_ended_text_requests():
    from llmfleet.ranker.online import OnlineRanker

    pod = await start_fake_pod(token_delay_s=0.001)
    pod.servicer.faults.eos_at = 4
    clock = FakeClock(0.0)
    learner = OnlineRanker(clock, initial=ConstantPredictor(50), min_examples=2, trainer=lambda ex: ConstantPredictor(len(ex)))
    d = Dispatcher(make_policy("fcfs-rr"), clock=clock, predictor=learner)
    await d.start()
    await d.set_pods({"p0": pod.address})
    try:
        await wait_for_condition(lambda: d.healthy_pods(), 10)
        for text in ("first prompt", "second prompt"):
            _, end = await _drain(await d.submit(GenerateSpec(max_tokens=20, prompt_text=text)))
            assert isinstance(end, FinishEvent) and end.finish_reason == "stop"
        _, end = await _drain(await d.submit(GenerateSpec(max_tokens=4, prompt_ids=(1, 2), ignore_eos=True)))
        assert learner.recorder.seen == 2  # token-id prompts and capped lengths are not recorded
        before = await d.submit(GenerateSpec(max_tokens=20, prompt_text="third"))
        assert before.estimate is not None and before.estimate.expected_tokens == 50
        assert learner.retrain_now() and learner.version == 1
        after = await d.submit(GenerateSpec(max_tokens=20, prompt_text="fourth"))
        assert after.estimate is not None and after.estimate.expected_tokens == 2
        exact = await d.submit(GenerateSpec(max_tokens=7, prompt_ids=(3,), ignore_eos=True))
        assert exact.estimate is not None and exact.estimate.expected_tokens == 7
    finally:
        await d.stop(0)
        await pod.stop()


async def test_prefill_pacing_holds_the_next_prompt_until_the_first_token():
    """With pacing, a pod still prefilling one prompt gets no second one that would overflow the
    budget: the dispatcher releases it when the first slice's first token arrives."""
    pod = await start_fake_pod(token_delay_s=0.001, first_token_delay_s=0.3)
    d = await _dispatcher(make_policy("llmfleet", prefill_pace_tokens=300), [pod])
    try:
        first = await d.submit(GenerateSpec(max_tokens=5, prompt_ids=tuple(range(1, 201)), ignore_eos=True))
        await wait_for_condition(lambda: first.request_id in d.running, 10, what="first released")
        second = await d.submit(GenerateSpec(max_tokens=5, prompt_ids=tuple(range(2, 202)), ignore_eos=True))
        conn = d.pods["p0"]
        assert conn.state(d.clock.now()).pending_prefill_tokens == 200
        await asyncio.sleep(0.1)  # scheduling points pass; the pod is still prefilling
        assert second.request_id in d.queue and not first.generated
        await wait_for_condition(lambda: second.request_id in d.running, 10, what="second released")
        assert first.generated  # released only once the first prompt produced a token
        for req in (first, second):
            ids, end = await _drain(req)
            assert isinstance(end, FinishEvent) and len(ids) == 5
        assert conn.state(d.clock.now()).pending_prefill_tokens == 0
    finally:
        await d.stop(0)
        await pod.stop()


class RaisesOnPoison:
    """Test policy: FCFS to the first pod, but raises whenever a request with priority 666 is queued."""

    name = "test-raises"

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        if any(r.priority == 666 for r in view.queue):
            raise ValueError("cannot rank priority 666")
        return tuple(Assignment(r.request_id, view.pods[0].pod_id, ALL_REMAINING) for r in view.queue)


async def test_a_policy_that_raises_fails_only_the_requests_it_raises_on():
    pod = await start_fake_pod(token_delay_s=0.001)
    d = await _dispatcher(RaisesOnPoison(), [pod])
    try:
        poison = await d.submit(GenerateSpec(max_tokens=4, prompt_ids=(1,), ignore_eos=True, priority=666))
        fine = await d.submit(GenerateSpec(max_tokens=4, prompt_ids=(2,), ignore_eos=True))
        ids, end = await asyncio.wait_for(_drain(poison), 10)
        assert isinstance(end, FailEvent) and end.code == "INTERNAL"
        assert "cannot rank priority 666" in end.message and not ids
        ids, end = await asyncio.wait_for(_drain(fine), 10)
        assert isinstance(end, FinishEvent) and ids == reference((2,), 4)
        # the loop survived: a later request is scheduled as usual
        later = await d.submit(GenerateSpec(max_tokens=3, prompt_ids=(3,), ignore_eos=True))
        ids, end = await asyncio.wait_for(_drain(later), 10)
        assert isinstance(end, FinishEvent) and len(ids) == 3
        assert d.metrics.policy_failures._value.get() >= 1
    finally:
        await d.stop(0)
        await pod.stop()


class _ClosedChannelCall:
    """A Slices call whose reading fails with an error that is not an RPC error."""

    def __init__(self) -> None:
        self.cancelled = False

    async def write(self, message: object) -> None:
        pass

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def __aiter__(self) -> _ClosedChannelCall:
        return self

    async def __anext__(self) -> object:
        await asyncio.sleep(0)
        raise RuntimeError("Channel closed!")


async def test_an_unexpected_error_in_a_slice_resumes_elsewhere_instead_of_hanging():
    """Not an RPC error (e.g. a channel closed under the call): the slice counts as a pod failure,
    so the request resumes on another pod with its tokens exact, rather than staying running."""
    pods = [await start_fake_pod(token_delay_s=0.001), await start_fake_pod(token_delay_s=0.001)]
    d = await _dispatcher(make_policy("fcfs-rr"), pods)
    try:
        stream = d.pods["p0"].slices
        original = stream._open_call
        broken_calls: list[_ClosedChannelCall] = []

        def open_call():
            stream._open_call = original  # only the first call breaks
            broken_calls.append(_ClosedChannelCall())
            return broken_calls[-1]

        stream._open_call = open_call
        req = await d.submit(GenerateSpec(max_tokens=6, prompt_ids=(4, 5), ignore_eos=True))
        ids, end = await asyncio.wait_for(_drain(req), 10)
        assert isinstance(end, FinishEvent) and ids == reference((4, 5), 6)
        assert broken_calls and broken_calls[0].cancelled, "the broken call was never tried"
        assert d.failovers >= 1 and not d.running
    finally:
        await d.stop(0)
        for p in pods:
            await p.stop()


async def test_with_no_healthy_pod_requests_fail_within_the_bound_instead_of_waiting_forever():
    pod = await start_fake_pod()
    d = await _dispatcher(make_policy("fcfs-rr"), [pod], unplaceable_timeout_s=30.0)
    try:
        await pod.stop()  # every sidecar gone
        await wait_for_condition(lambda: not d.healthy_pods(), 10, what="the pod seen as gone")
        clock: FakeClock = d.clock  # type: ignore[assignment]
        clock.advance(0.3)  # a tick notices
        await asyncio.sleep(0.05)
        req = await d.submit(GenerateSpec(max_tokens=5, prompt_ids=(1, 2)))
        for _ in range(4):
            clock.advance(7.0)  # 28 s: still waiting for a pod to come back
            await asyncio.sleep(0.02)
        assert not req.done
        clock.advance(2.5)
        ids, end = await asyncio.wait_for(_drain(req), 5)
        assert isinstance(end, FailEvent) and end.code == "UNAVAILABLE" and "no healthy engine for 30 s" in end.message
        with pytest.raises(NoEngine, match="no healthy engine"):  # new requests: refused at once now
            await d.submit(GenerateSpec(max_tokens=5, prompt_ids=(1, 2)))
    finally:
        await d.stop(0)


async def test_queue_and_running_gauges_read_the_live_counts():
    """The two gauges are read when Prometheus scrapes, so they are exact with no update on the
    request's path: a request waiting for a pod shows in the queue, then in running."""
    pod = await start_fake_pod(token_delay_s=0.01)
    d = Dispatcher(make_policy("fcfs-rr"), clock=FakeClock(1000.0))
    await d.start()
    value = d.metrics.registry.get_sample_value
    try:
        req = await d.submit(GenerateSpec(max_tokens=20, prompt_ids=(1, 2), ignore_eos=True))
        assert (value("llmfleet_dispatcher_queue_length"), value("llmfleet_dispatcher_running_requests")) == (1.0, 0.0)
        await d.set_pods({"p0": pod.address})
        await wait_for_condition(lambda: req.request_id in d.running, 10, what="request started")
        assert (value("llmfleet_dispatcher_queue_length"), value("llmfleet_dispatcher_running_requests")) == (0.0, 1.0)
        await _drain(req)
        assert value("llmfleet_dispatcher_running_requests") == 0.0
    finally:
        await d.stop(0)
        await pod.stop()


async def test_pod_limits_follow_pods_joining_leaving_and_reporting_new_limits():
    """The smallest context, block and vocabulary are kept between requests, so each change must
    reach them: a pod that joins with a smaller context, one whose report changes, one leaving."""
    wide = await start_fake_pod()
    narrow = await start_fake_pod()
    narrow.servicer.max_model_len = 64
    wide.servicer.vocab_size = 500
    d = await _dispatcher(make_policy("fcfs-rr"), [wide])
    try:
        assert d.pod_limits() == PodLimits(max_model_len=512, block_size=16, vocab_size=500)
        with pytest.raises(InvalidRequest, match="outside the model's vocabulary"):
            await d.submit(GenerateSpec(max_tokens=2, prompt_ids=(1, 500)))
        await d.set_pods({"p0": wide.address, "p1": narrow.address})
        await wait_for_condition(lambda: d.context_limit() == 64, 10, what="the narrow pod's context")
        with pytest.raises(InvalidRequest, match="context of 64 tokens"):
            await d.submit(GenerateSpec(max_tokens=70, prompt_ids=(1, 2)))
        d.pods["p0"].vocab_size = 300  # as a load report would set it
        assert d.pod_limits().vocab_size == 300
        await d.set_pods({"p0": wide.address})
        assert d.context_limit() == 512 and d.context_limit(known=100) == 100
        req = await d.submit(GenerateSpec(max_tokens=70, prompt_ids=(1, 2), ignore_eos=True))
        ids, end = await asyncio.wait_for(_drain(req), 10)
        assert isinstance(end, FinishEvent) and len(ids) == 70
    finally:
        await d.stop(0)
        await wide.stop()
        await narrow.stop()


async def test_the_view_counts_admitted_requests():
    """The overtake guard's count: `admitted` grows by one per accepted request (a refused one
    takes no number), and queued requests are numbered below it."""
    d = Dispatcher(make_policy("llmfleet"), clock=FakeClock(1000.0))
    await d.start()
    try:
        assert d.view().admitted == 0
        for _ in range(3):
            await d.submit(GenerateSpec(max_tokens=5, prompt_ids=(1, 2)))
        with pytest.raises(InvalidRequest):
            await d.submit(GenerateSpec(max_tokens=5, prompt_ids=()))
        v = d.view()
        assert v.admitted == 3 and sorted(r.seq for r in v.queue) == [0, 1, 2]
    finally:
        await d.stop(0)
