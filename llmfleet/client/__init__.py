"""A small async client for the dispatcher (`DispatcherClient`) and the `llmfleet client` CLI."""

from llmfleet.client.client import DispatcherClient, Generation

__all__ = ["DispatcherClient", "Generation"]
