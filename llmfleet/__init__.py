"""llmfleet: fleets of vLLM servers with slice-level scheduling and a learned length ranker."""

__version__ = "0.1.0"
