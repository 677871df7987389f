"""The scheduling configuration has one owner, and every CRD scheduling field reaches the policy:
each row sets one field in an LLMFleet spec, runs it through the operator's rendering into the
ConfigMap's YAML, loads that as the dispatcher does, builds the policy with `make_policy`, and
shows the decision changes on a hand-built view."""

from __future__ import annotations

from typing import Any

import pytest

from llmfleet.core.config import SchedulingConfig
from llmfleet.core.scheduling import SchedulerView
from llmfleet.operator import render
from llmfleet.operator.spec import FleetSpec, SchedulingSpec
from llmfleet.policies.registry import make_policy
from tests.policies.views import placed, pod, req, view


def _through_the_crd(scheduling: dict[str, Any]) -> SchedulingConfig:
    spec = FleetSpec.model_validate({"model": {"name": "m"}, "replicas": 3, "scheduling": scheduling})
    cm = render.render_config_map(render.FleetRef(name="f", namespace="ns", uid="uid"), spec)
    return SchedulingConfig.from_yaml(cm["data"]["scheduling.yaml"])


def _decide(scheduling: dict[str, Any], v: SchedulerView) -> list[tuple[str, str, int]]:
    return placed(make_policy(_through_the_crd(scheduling)).decide(v))


GUARD_QUEUE = [req("long", 0, expected=500, arrival=0.0), req("short", 1, expected=10, arrival=39.0)]
GUARD_VIEW = view(GUARD_QUEUE, [pod("a", running=3)], now=40.0)
# "long" waited 5 s, and later arrivals 1-4 started before it: more than one turn of the 3 running
OVERTAKE_VIEW = view(
    [req("long", 0, expected=500, arrival=0.0), req("short", 5, expected=10, arrival=4.9)],
    [pod("a", running=3)],
    now=5.0,
    admitted=6,
)
# "long" was overtaken 4 times (by 1-4): over one turn of the 3 running, under half the queue of 11
DEEP_VIEW = view(
    [req("long", 0, expected=500, arrival=0.0), *(req(f"s{i}", 4 + i, expected=10, arrival=4.0 + 0.01 * i) for i in range(1, 11))],
    [pod("a", running=3)],
    now=5.0,
    admitted=15,
)
L4_PODS = [pod("p0", group="short"), pod("p1", group="long")]
L4_VIEW = view([req("r", 0, generated=150)], L4_PODS)


@pytest.mark.parametrize(
    ("field", "before", "after", "v"),
    [
        # the pod is full: llmfleet holds the request, fcfs-rr sends it
        ("policy", {"policy": "llmfleet"}, {"policy": "fcfs-rr"}, view([req("r", 0)], [pod("a", running=4, waiting=2)])),
        ("engineLookahead", {}, {"engineLookahead": 2}, view([req("r", 0)], [pod("a", running=4)])),
        ("sliceTokens", {}, {"sliceTokens": 16}, view([req("r", 0, expected=50)], [pod("a")])),
        ("starvationBoundSeconds", {}, {"starvationBoundSeconds": 60}, GUARD_VIEW),  # "long" waited 40 s
        ("starvationOvertakeTurns", {}, {"starvationOvertakeTurns": 2}, OVERTAKE_VIEW),
        ("starvationOvertakeQueueFraction", {}, {"starvationOvertakeQueueFraction": 0}, DEEP_VIEW),
        (
            "prefillPaceTokens",
            {},
            {"prefillPaceTokens": 4096},
            view([req("r", 0, prompt=1000)], [pod("a", prefilling=1500)]),  # 1500 + 1000 > 2048
        ),
        (
            "lengthGroups",
            {"policy": "l4", "lengthGroups": {"ranges": [{"name": "short", "minTokens": 0, "maxTokens": 100}, {"name": "long", "minTokens": 100}]}},
            {"policy": "l4", "lengthGroups": {"ranges": [{"name": "short", "minTokens": 0, "maxTokens": 200}, {"name": "long", "minTokens": 200}]}},
            L4_VIEW,
        ),
    ],
)
def test_each_crd_scheduling_field_changes_what_the_policy_decides(field, before, after, v) -> None:
    assert _decide(before, v) != _decide(after, v), field


def test_the_values_arrive_unchanged() -> None:
    config = _through_the_crd(
        {"sliceTokens": 64, "starvationBoundSeconds": 12.5, "prefillPaceTokens": 99, "maxQueue": 7, "engineLookahead": 5,
         "starvationOvertakeTurns": 0.5, "starvationOvertakeQueueFraction": 0.75}
    )  # fmt: skip
    assert (config.slice_tokens, config.starvation_bound_seconds, config.prefill_pace_tokens, config.max_queue) == (64, 12.5, 99, 7)
    assert config.engine_lookahead == 5
    policy = make_policy(config)
    assert (policy.slice_tokens, policy.starvation_bound_s, policy.profile.prefill_pace_tokens) == (64, 12.5, 99)  # type: ignore[attr-defined]
    assert policy.profile.lookahead == 5  # type: ignore[attr-defined]
    assert config.starvation_overtake_turns == policy.overtake_turns == 0.5  # type: ignore[attr-defined]
    assert config.starvation_overtake_queue_fraction == policy.overtake_queue_fraction == 0.75  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "field", ["starvationOvertakeTurns", "starvationOvertakeQueueFraction", "prefillPaceTokens"]
)
def test_null_turns_a_setting_off_all_the_way_to_the_dispatcher(field: str) -> None:
    """null is not the default for these (1, 0.5, 2048): the ConfigMap must say null, or the
    dispatcher would load the default back and the guard or pacing would stay on."""
    config = _through_the_crd({field: None})
    snake = next(name for name, f in SchedulingConfig.model_fields.items() if f.alias == field)
    assert getattr(config, snake) is None
    assert getattr(SchedulingConfig(), snake) is not None


def test_defaults_live_in_one_place() -> None:
    # The CRD's scheduling block is the config's fields plus a ranker reference: same defaults.
    crd, config = SchedulingSpec(), SchedulingConfig()
    assert crd.model_dump(exclude={"ranker"}) == config.model_dump(exclude={"ranker"})
    assert config.slice_tokens is None and config.slice_or_fallback == 128


def test_an_unknown_policy_is_refused_with_the_known_names() -> None:
    with pytest.raises(ValueError, match="unknown policy 'srpt'; known: fcfs-rr"):
        SchedulingConfig(policy="srpt")
    with pytest.raises(ValueError, match="unknown policy"):
        FleetSpec.model_validate({"model": {"name": "m"}, "scheduling": {"policy": "srpt"}})
