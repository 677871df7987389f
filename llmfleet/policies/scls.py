"""`scls`: slice-level scheduling (SCLS). Generation is cut into slices of S tokens; an idle
pod receives a batch whose size adapts to memory (every member's context plus S must fit
the KV pool), served for one slice; unfinished requests re-queue (FCFS by re-queue time).
Max-min offloading sends each batch to the pod with the least estimated remaining work."""

from __future__ import annotations

from llmfleet.core.config import SchedulingFields
from llmfleet.core.scheduling import Decision, SchedulerView
from llmfleet.policies.batching import form_batches


class SliceLevel:
    name = "scls"

    def __init__(self, config: SchedulingFields | None = None) -> None:
        self.slice_tokens = (config or SchedulingFields()).slice_or_fallback

    def decide(self, view: SchedulerView) -> tuple[Decision, ...]:
        s = self.slice_tokens
        return form_batches(view, view.queue, s, reserve_tokens=s)
