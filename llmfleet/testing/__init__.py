"""Test doubles shared across llmfleet tests (e.g. the Kubernetes API emulator)."""
