"""Prometheus metrics of one dispatcher, on its own registry (several may run in one process)."""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class DispatcherMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.queue_length = Gauge("llmfleet_dispatcher_queue_length", "Requests waiting at the dispatcher", registry=r)
        self.running = Gauge("llmfleet_dispatcher_running_requests", "Requests with a slice running on a pod", registry=r)
        self.requests = Counter(
            "llmfleet_dispatcher_requests", "Requests ended, by outcome", ["outcome"], registry=r
        )
        self.rejected = Counter("llmfleet_dispatcher_rejected", "Requests refused because the queue was full", registry=r)
        self.slice_seconds = Histogram(
            "llmfleet_dispatcher_slice_seconds", "Seconds from sending a slice to its end", buckets=_LATENCY, registry=r
        )
        self.ttft_seconds = Histogram(
            "llmfleet_dispatcher_ttft_seconds", "Time to first token, from arrival", buckets=_LATENCY, registry=r
        )
        self.e2e_seconds = Histogram(
            "llmfleet_dispatcher_e2e_seconds", "End-to-end latency of finished requests", buckets=_LATENCY, registry=r
        )
        self.queue_seconds = Histogram(
            "llmfleet_dispatcher_queue_seconds", "Time requests waited at the dispatcher", buckets=_LATENCY, registry=r
        )
        self.decision_seconds = Histogram(
            "llmfleet_dispatcher_decision_seconds",
            "Seconds per policy decision (build view + decide + apply)",
            buckets=(1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1),
            registry=r,
        )
        self.migrations = Counter("llmfleet_dispatcher_migrations", "Slices that moved a request to another pod", registry=r)
        self.failovers = Counter(
            "llmfleet_dispatcher_failovers", "Slices resumed elsewhere after a pod or engine failure", registry=r
        )
        self.preemptions = Counter("llmfleet_dispatcher_preemptions", "Running requests preempted by the policy", registry=r)
        self.slice_outcomes = Counter(
            "llmfleet_dispatcher_slice_outcomes", "How slices ended (dispatcher/outcomes.py SliceOutcome)", ["outcome"], registry=r
        )
        self.policy_errors = Counter(
            "llmfleet_dispatcher_policy_errors", "Decisions ignored (unknown id, duplicate, unhealthy pod)", registry=r
        )
        self.policy_failures = Counter(
            "llmfleet_dispatcher_policy_failures",
            "Scheduling points at which the policy raised (the requests it raised on were failed)",
            registry=r,
        )
        self.tokens = Counter("llmfleet_dispatcher_tokens", "Output tokens streamed to clients", registry=r)
        self.reestimates = Counter(
            "llmfleet_dispatcher_reestimates", "Remaining-length re-estimates made at slice boundaries", registry=r
        )
        self.reestimate_seconds = Histogram(
            "llmfleet_dispatcher_reestimate_seconds", "Seconds per re-estimate batch (in a worker thread)",
            buckets=(1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5), registry=r,
        )  # fmt: skip
        self.ranker_tau = Gauge(
            "llmfleet_dispatcher_ranker_tau",
            "Kendall tau between admission estimates and true output lengths, over the recent window", registry=r,
        )  # fmt: skip
        self.ranker_baseline_tau = Gauge(
            "llmfleet_dispatcher_ranker_prompt_length_tau",
            "The same tau for the prompt-length baseline (the ranker falls back to it while it is better)", registry=r,
        )  # fmt: skip
        self.ranker_fallback = Gauge(
            "llmfleet_dispatcher_ranker_fallback", "1 while the prompt-length baseline stands in for the ranker", registry=r
        )
        self.pod_inflight = Gauge("llmfleet_dispatcher_pod_inflight", "Slices running on each pod", ["pod"], registry=r)
        self.pod_running = Gauge("llmfleet_dispatcher_pod_engine_running", "Engine running requests", ["pod"], registry=r)
        self.pod_waiting = Gauge("llmfleet_dispatcher_pod_engine_waiting", "Engine waiting requests", ["pod"], registry=r)
        self.pod_kv = Gauge("llmfleet_dispatcher_pod_kv_cache_usage", "Engine KV cache usage 0..1", ["pod"], registry=r)
        self.pod_healthy = Gauge("llmfleet_dispatcher_pod_healthy", "1 when the pod takes slices", ["pod"], registry=r)

        # Labelled children, looked up once: `labels()` takes a lock and builds a key each call,
        # and these two are counted for every request.
        self.request_outcome = lru_cache(maxsize=None)(self.requests.labels)
        self.slice_outcome = lru_cache(maxsize=None)(self.slice_outcomes.labels)

    def forget_pod(self, pod: str) -> None:
        for g in (self.pod_inflight, self.pod_running, self.pod_waiting, self.pod_kv, self.pod_healthy):
            try:
                g.remove(pod)
            except KeyError:
                pass
