"""Test support shared by llmfleet's tests and benchmarks: a real Kubernetes control plane (`cluster`)."""
