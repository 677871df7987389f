"""Prometheus metrics of the operator (served on --metrics-port, scraped via the chart's ServiceMonitor)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECONCILES = Counter(
    "llmfleet_operator_reconciles_total", "Fleet reconciliations by outcome (applied, invalid, refused, retry).", ["result"]
)
RECONCILE_SECONDS = Histogram(
    "llmfleet_operator_reconcile_seconds",
    "Time to render and apply one fleet's children.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
APPLIES = Counter("llmfleet_operator_child_applies_total", "Server-side applies of child objects.", ["kind"])
DRIFT_RESTORED = Counter(
    "llmfleet_operator_drift_restored_total", "Children re-applied after a hand edit or deletion.", ["kind"]
)
STATUS_WRITES = Counter("llmfleet_operator_status_writes_total", "Fleet status updates driven by child events.")
RESYNCS = Counter("llmfleet_operator_resyncs_total", "Periodic re-applies of a fleet (safety net for lost events).")
