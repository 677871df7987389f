"""Pure functions that derive an LLMFleet's status from what its child Deployments report.

The operator feeds in observations (from its index of child Deployments) and the previous status,
and writes back whatever these functions return; the clock is an argument, so tests are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmfleet.operator import spec as s
from llmfleet.operator.render import COMPONENT_LABEL, FLEET_LABEL, GROUP_LABEL, FleetRef, group_replicas
from llmfleet.operator.render_dispatcher import dispatcher_endpoint, openai_base_url


@dataclass(frozen=True)
class DeploymentObservation:
    """The parts of a child Deployment that status depends on."""

    name: str
    component: str
    group: str | None
    wanted: int
    ready: int
    updated: int
    generation: int
    observed_generation: int
    # Why the rollout cannot finish, as the Deployment controller reports it (None while it can).
    failure: str | None = None

    @property
    def rolled_out(self) -> bool:
        return self.observed_generation >= self.generation and self.updated >= self.wanted and self.ready >= self.wanted

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> DeploymentObservation:
        meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status") or {}
        labels = meta.get("labels", {})
        return cls(
            name=meta.get("name", ""),
            component=labels.get(COMPONENT_LABEL, ""),
            group=labels.get(GROUP_LABEL),
            wanted=int(spec.get("replicas", 1)),
            ready=int(status.get("readyReplicas", 0)),
            updated=int(status.get("updatedReplicas", 0)),
            generation=int(meta.get("generation", 1)),
            observed_generation=int(status.get("observedGeneration", 0)),
            failure=rollout_failure(status.get("conditions") or []),
        )


def rollout_failure(conditions: list[dict[str, Any]]) -> str | None:
    """The Deployment controller's own verdict that a rollout is stuck, as `Reason: message`.

    ReplicaFailure=True means its ReplicaSet cannot create Pods (quota, Pod Security admission, a
    missing ServiceAccount); Progressing=False with ProgressDeadlineExceeded means Pods were made
    but never became ready in time. Both need a person, so they make the fleet Degraded.
    """
    for c in conditions:
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            return f"{c.get('reason', 'ReplicaFailure')}: {c.get('message', '')}".rstrip(": ")
    for c in conditions:
        if c.get("type") == "Progressing" and c.get("status") == "False" and c.get("reason") == "ProgressDeadlineExceeded":
            return f"ProgressDeadlineExceeded: {c.get('message', '')}".rstrip(": ")
    return None


def _condition(
    ctype: str, ok: bool, reason: str, message: str, generation: int, previous: list[dict[str, Any]], now: str
) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = next((c for c in previous if c.get("type") == ctype), None)
    # lastTransitionTime moves only when the status flips, as kubectl and controllers expect.
    since = before["lastTransitionTime"] if before and before.get("status") == status and before.get("lastTransitionTime") else now
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def status_from_children(
    ref: FleetRef,
    spec: s.FleetSpec,
    generation: int,
    observations: list[DeploymentObservation],
    previous: dict[str, Any] | None,
    now: str,
    apply_errors: list[str] | None = None,
) -> dict[str, Any]:
    """The status of a valid spec. Children the server refused (`apply_errors`) or whose rollout
    the Deployment controller gave up on make it Degraded, naming the child and the reason."""
    prev_conditions = list((previous or {}).get("conditions") or [])
    wanted = group_replicas(spec)
    by_group = {o.group: o for o in observations if o.component == "engine" and o.group}
    dispatcher = next((o for o in observations if o.component == "dispatcher"), None)
    ranges = {}
    lg = spec.scheduling.length_groups
    if lg is not None and lg.ranges is not None:
        ranges = {r.name: r for r in lg.ranges}

    groups, waiting = [], []
    for name, count in wanted.items():
        obs = by_group.get(name)
        ready = min(obs.ready, count) if obs and obs.observed_generation >= obs.generation else 0
        entry: dict[str, Any] = {"name": name, "replicas": count, "readyReplicas": ready}
        if name in ranges:
            entry["minTokens"] = ranges[name].min_tokens
            if ranges[name].max_tokens is not None:
                entry["maxTokens"] = ranges[name].max_tokens
        groups.append(entry)
        if obs is None or not obs.rolled_out or obs.wanted != count:
            waiting.append(f"group {name} {ready}/{count}")
    if dispatcher is None or not dispatcher.rolled_out or dispatcher.wanted != spec.dispatcher.replicas:
        d_ready = dispatcher.ready if dispatcher else 0
        waiting.append(f"dispatcher {d_ready}/{spec.dispatcher.replicas}")

    total = sum(wanted.values())
    ready_total = sum(g["readyReplicas"] for g in groups)
    ok = not waiting
    message = "all engine groups and the dispatcher are rolled out" if ok else "waiting for " + ", ".join(waiting)
    problems = [f"applying {e}" for e in apply_errors or []]
    problems += [f"Deployment {o.name}: {o.failure}" for o in observations if o.failure]
    if problems:
        reason = "ApplyFailed" if apply_errors else "RolloutFailed"
        why = "; ".join(problems)
        conditions = [
            _condition("Ready", ok, "AllReplicasReady" if ok else reason, message if ok else why, generation, prev_conditions, now),
            _condition("Progressing", False, reason, why, generation, prev_conditions, now),
            _condition("Degraded", True, reason, why, generation, prev_conditions, now),
        ]
        phase, summary = "Degraded", why
    else:
        conditions = [
            _condition("Ready", ok, "AllReplicasReady" if ok else "ReplicasNotReady", message, generation, prev_conditions, now),
            _condition(
                "Progressing", not ok, "RollingOut" if not ok else "RolloutComplete", message, generation, prev_conditions, now
            ),
            _condition("Degraded", False, "AsExpected", "spec is valid", generation, prev_conditions, now),
        ]
        phase = "Pending" if not observations else "Ready" if ok else "Progressing"
        summary = message
    return {
        "observedGeneration": generation,
        "phase": phase,
        "conditions": conditions,
        "groups": groups,
        "replicas": total,
        "readyReplicas": ready_total,
        "ready": f"{ready_total}/{total}",
        "selector": f"{FLEET_LABEL}={ref.name},{COMPONENT_LABEL}=engine",
        "dispatcherEndpoint": dispatcher_endpoint(ref, spec),
        "openaiBaseUrl": openai_base_url(ref, spec),
        "message": summary,
    }


def status_invalid(
    generation: int, reason: str, message: str, previous: dict[str, Any] | None, now: str, replicas: int | None = None
) -> dict[str, Any]:
    """Status for a spec the operator refuses to run: Degraded with the reason, children left as they were.

    `replicas` is the spec's own count: /scale reads status.replicas, so it follows the spec even
    while the operator cannot act on it; the ready count stays what was last observed.
    """
    prev = previous or {}
    prev_conditions = list(prev.get("conditions") or [])
    counts: dict[str, Any] = {}
    if replicas is not None:
        ready = int(prev.get("readyReplicas") or 0)
        counts = {"replicas": replicas, "readyReplicas": ready, "ready": f"{ready}/{replicas}"}
    return {
        **counts,
        "observedGeneration": generation,
        "phase": "Degraded",
        "message": message,
        "conditions": [
            _condition("Ready", False, reason, message, generation, prev_conditions, now),
            _condition("Progressing", False, reason, message, generation, prev_conditions, now),
            _condition("Degraded", True, reason, message, generation, prev_conditions, now),
        ],
    }


def status_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether writing `new` would change anything (skips no-op status writes on every child event)."""
    old = old or {}
    return any(old.get(k) != v for k, v in new.items())
