"""Scheduling policies: pure objects with one `decide(view)` method, registered by name in
`llmfleet.policies.registry` (see `llmfleet.core.scheduling` for the contract)."""

from llmfleet.policies.registry import POLICIES, make_policy, policy_names

__all__ = ["POLICIES", "make_policy", "policy_names"]
