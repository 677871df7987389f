"""One registry names every policy, with a one-line description."""

from __future__ import annotations

import pytest

from llmfleet.policies.registry import POLICIES, make_policy, policy_names

ISSUE_POLICIES = [
    "fcfs-rr",
    "least-load",
    "llm-d",
    "dynamo",
    "sls",
    "scls",
    "ltr",
    "alise",
    "l4",
    "oracle-srpt",
    "llmfleet",
]


def test_every_policy_from_the_issue_is_registered_in_order() -> None:
    assert policy_names() == ISSUE_POLICIES


@pytest.mark.parametrize("name", ISSUE_POLICIES)
def test_descriptions_are_one_line_and_policies_carry_their_name(name: str) -> None:
    spec = POLICIES[name]
    assert spec.description and "\n" not in spec.description and len(spec.description) < 100
    assert make_policy(name).name == name


def test_unknown_policy_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="fcfs-rr"):
        make_policy("nope")


def test_make_policy_takes_a_config_and_settings_override_it() -> None:
    from llmfleet.core.config import SchedulingConfig

    config = SchedulingConfig(policy="scls", slice_tokens=32)
    assert make_policy(config).slice_tokens == 32  # type: ignore[attr-defined]
    assert make_policy(config, slice_tokens=8).slice_tokens == 8  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        make_policy(config, slice_tokens=0)


@pytest.mark.parametrize("name", ISSUE_POLICIES)
def test_with_an_empty_queue_no_policy_decides_anything(name: str) -> None:
    """The contract that lets the dispatcher and the simulator skip scheduling points with an
    empty queue: even a full pod under memory pressure is left alone until work waits."""
    from tests.policies.views import pod, req, view

    running = [req(f"r{i}", i, generated=50, expected=900.0, pod="p0") for i in range(4)]
    busy = view(running=running, pods=[pod("p0", running=4, kv_used=99_000), pod("p1")], now=1000.0)
    assert make_policy(name).decide(busy) == ()
