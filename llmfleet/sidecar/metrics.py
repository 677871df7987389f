"""Prometheus metrics of one sidecar, on its own registry (several may run in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class SidecarMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.slices = Counter("llmfleet_sidecar_slices", "Slice items finished, by outcome", ["outcome"], registry=r)
        self.tokens = Counter("llmfleet_sidecar_tokens", "Tokens streamed back to the dispatcher", registry=r)
        self.inflight = Gauge("llmfleet_sidecar_inflight_slices", "RunSlice calls in progress", registry=r)
        self.slice_seconds = Histogram(
            "llmfleet_sidecar_slice_seconds",
            "Seconds per slice item on the engine",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.first_token_seconds = Histogram(
            "llmfleet_sidecar_first_token_seconds",
            "Seconds from a slice item reaching the sidecar to the engine's first token for it "
            "(with vLLM's own TTFT, shows what the HTTP hop and the engine's front add)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.draining = Gauge("llmfleet_sidecar_draining", "1 while draining", registry=r)
        self.engine_running = Gauge("llmfleet_sidecar_engine_running", "Engine requests running", registry=r)
        self.engine_waiting = Gauge("llmfleet_sidecar_engine_waiting", "Engine requests waiting", registry=r)
        self.engine_kv = Gauge("llmfleet_sidecar_engine_kv_cache_usage", "Engine KV cache usage 0..1", registry=r)
