"""Pure status derivation: phases, conditions and their transition times."""

from __future__ import annotations

import pytest

from llmfleet.operator.handlers import parse_spec
from llmfleet.operator.kube import KubeApiError
from llmfleet.operator.render import FleetRef
from llmfleet.operator.status import (
    DeploymentObservation,
    rollout_failure,
    status_changed,
    status_from_children,
    status_invalid,
)

REF = FleetRef("f", "ns", "uid-1")
SPEC = parse_spec({"model": {"name": "m"}, "replicas": 2})


def _obs(name: str, component: str, group: str | None, wanted: int, ready: int, gen: int = 1, seen: int = 1) -> DeploymentObservation:
    return DeploymentObservation(name, component, group, wanted, ready, ready, gen, seen)


def _cond(status: dict, ctype: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_no_children_yet_is_pending() -> None:
    st = status_from_children(REF, SPEC, 1, [], None, "t0")
    assert st["phase"] == "Pending" and st["ready"] == "0/2"
    assert _cond(st, "Ready")["status"] == "False"


def test_ready_when_every_group_and_the_dispatcher_rolled_out() -> None:
    obs = [_obs("f-default", "engine", "default", 2, 2), _obs("f-dispatcher", "dispatcher", None, 1, 1)]
    st = status_from_children(REF, SPEC, 3, obs, None, "t0")
    assert st["phase"] == "Ready" and st["ready"] == "2/2" and st["observedGeneration"] == 3
    assert _cond(st, "Ready")["reason"] == "AllReplicasReady" and _cond(st, "Progressing")["status"] == "False"
    assert st["selector"] == "llmfleet.io/fleet=f,llmfleet.io/component=engine"


def test_a_deployment_behind_on_generation_is_not_ready() -> None:
    obs = [_obs("f-default", "engine", "default", 2, 2, gen=2, seen=1), _obs("f-dispatcher", "dispatcher", None, 1, 1)]
    st = status_from_children(REF, SPEC, 2, obs, None, "t0")
    assert st["phase"] == "Progressing" and st["ready"] == "0/2"
    assert "group default 0/2" in _cond(st, "Ready")["message"]


def test_transition_time_moves_only_when_the_status_flips() -> None:
    waiting = [_obs("f-default", "engine", "default", 2, 1), _obs("f-dispatcher", "dispatcher", None, 1, 1)]
    first = status_from_children(REF, SPEC, 1, waiting, None, "t0")
    same = status_from_children(REF, SPEC, 1, waiting, first, "t1")
    assert _cond(same, "Ready")["lastTransitionTime"] == "t0"
    assert not status_changed(first, same)
    ready = [_obs("f-default", "engine", "default", 2, 2), _obs("f-dispatcher", "dispatcher", None, 1, 1)]
    flipped = status_from_children(REF, SPEC, 1, ready, same, "t2")
    assert _cond(flipped, "Ready")["lastTransitionTime"] == "t2"
    assert _cond(flipped, "Degraded")["lastTransitionTime"] == "t0"
    assert status_changed(same, flipped)


def test_invalid_status_is_degraded_with_the_reason() -> None:
    st = status_invalid(4, "InvalidSpec", "spec.replicas: bad", None, "t0")
    assert st["phase"] == "Degraded" and st["observedGeneration"] == 4
    assert _cond(st, "Degraded") | {} == {"type": "Degraded", "status": "True", "reason": "InvalidSpec",
                                          "message": "spec.replicas: bad", "lastTransitionTime": "t0",
                                          "observedGeneration": 4}  # fmt: skip
    assert _cond(st, "Ready")["status"] == "False"


def test_observation_from_a_deployment_body() -> None:
    body = {"metadata": {"name": "f-long", "generation": 3, "labels": {"llmfleet.io/component": "engine", "llmfleet.io/group": "long"}},
            "spec": {"replicas": 2}, "status": {"readyReplicas": 2, "updatedReplicas": 2, "observedGeneration": 3}}  # fmt: skip
    obs = DeploymentObservation.from_body(body)
    assert obs.group == "long" and obs.rolled_out


RS_FAILED = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "exceeded quota: q"}
DEADLINE = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "timed out"}
PROGRESSING = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated", "message": "rolling"}


@pytest.mark.parametrize("conditions, failure", [
    ([], None),
    ([PROGRESSING], None),
    ([PROGRESSING, RS_FAILED], "FailedCreate: exceeded quota: q"),
    ([DEADLINE], "ProgressDeadlineExceeded: timed out"),
    ([DEADLINE, RS_FAILED], "FailedCreate: exceeded quota: q"),  # the more specific cause first
    ([{**RS_FAILED, "status": "False"}], None),
    ([{**DEADLINE, "reason": "ReplicaSetUpdated"}], None),
])  # fmt: skip
def test_rollout_failure_reads_the_deployment_controllers_verdict(conditions: list, failure: str | None) -> None:
    assert rollout_failure(conditions) == failure


def test_a_failed_rollout_or_a_refused_child_is_degraded_naming_it() -> None:
    stuck = DeploymentObservation("f-default", "engine", "default", 2, 1, 1, 1, 1, failure="FailedCreate: exceeded quota")
    obs = [stuck, _obs("f-dispatcher", "dispatcher", None, 1, 1)]
    st = status_from_children(REF, SPEC, 2, obs, None, "t0")
    assert st["phase"] == "Degraded" and st["ready"] == "1/2" and st["observedGeneration"] == 2
    assert _cond(st, "Degraded").items() >= {"status": "True", "reason": "RolloutFailed",
                                          "message": "Deployment f-default: FailedCreate: exceeded quota"}.items()  # fmt: skip
    assert _cond(st, "Progressing")["status"] == "False" and _cond(st, "Ready")["status"] == "False"

    ready = [_obs("f-default", "engine", "default", 2, 2), _obs("f-dispatcher", "dispatcher", None, 1, 1)]
    st = status_from_children(REF, SPEC, 2, ready, st, "t1", ["Service f-dispatcher: 422 Invalid: duplicate"])
    assert st["phase"] == "Degraded" and _cond(st, "Degraded")["reason"] == "ApplyFailed"
    assert "applying Service f-dispatcher: 422" in _cond(st, "Degraded")["message"]
    assert _cond(st, "Degraded")["lastTransitionTime"] == "t0", "still Degraded: no transition"
    healed = status_from_children(REF, SPEC, 2, ready, st, "t2")
    assert healed["phase"] == "Ready" and _cond(healed, "Degraded")["status"] == "False"


def test_an_invalid_spec_keeps_scale_in_step_with_the_spec() -> None:
    before = {"replicas": 2, "readyReplicas": 2, "ready": "2/2"}
    st = status_invalid(5, "InvalidSpec", "bad", before, "t0", replicas=4)
    assert (st["replicas"], st["readyReplicas"], st["ready"]) == (4, 2, "2/4")


@pytest.mark.parametrize("status, person", [(400, True), (403, True), (422, True), (404, False), (409, False),
                                            (429, False), (500, False), (503, False)])  # fmt: skip
def test_which_refusals_need_a_person(status: int, person: bool) -> None:
    assert KubeApiError(status, "Reason", "msg").needs_a_person is person
