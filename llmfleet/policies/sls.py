"""`sls`: sequence-level static batching, FCFS (SCLS's baseline). An idle pod receives the
next batch from the head of the queue and the batch runs to completion before the pod
takes another one."""

from __future__ import annotations

from llmfleet.core.scheduling import ALL_REMAINING, Decision, SchedulerView
from llmfleet.policies.batching import form_batches


class SequenceLevelStatic:
    name = "sls"

    def __init__(self, config: object = None) -> None:
        del config  # whole requests in static batches: no slice length or guard applies

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        return form_batches(view, view.queue, ALL_REMAINING, reserve_tokens=None)
