"""The kopf handlers of the LLMFleet operator: thin adapters between kopf and the pure render/status code.

Flow: a fleet event parses the spec into `FleetSpec`, renders its children, server-side applies
them with one field manager, prunes children of removed groups and writes the derived status
through kopf's `patch`. A child the server refuses (a hand edit it cannot merge, admission) does
not hold back the others; the fleet goes Degraded naming it, as it does when a Deployment's
rollout fails, and the apply is retried. Child events (edits, deletions, Deployment progress) look the fleet up in
a kopf index, re-apply only a child that drifted, and refresh the fleet's status. A spec the
operator cannot run gets a Degraded condition, a Warning event and a PermanentError: no retries
until the spec changes. Deleting a fleet deletes its children explicitly (behind a finalizer);
their ownerReferences let a real cluster's garbage collector do the same. A slow timer re-applies
every fleet as a safety net for lost events (re-applying an unchanged child writes nothing).
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from llmfleet.operator import metrics
from llmfleet.operator import spec as s
from llmfleet.operator.drift import child_key, drifted
from llmfleet.operator.kube import CHILD_KINDS, KINDS, KubeApiError, KubeClient
from llmfleet.operator.render import (
    FLEET_LABEL,
    MANAGED_BY,
    OPERATOR_NAME,
    Defaults,
    FleetRef,
    InvalidFleet,
    render_children,
    sidecar_token_secret,
)
from llmfleet.operator.security import new_sidecar_token_secret
from llmfleet.operator.status import (
    DeploymentObservation,
    status_changed,
    status_from_children,
    status_invalid,
)

FINALIZER = "llmfleet.io/cleanup"
RETRY_DELAY = 5.0
CHILD_SELECTOR = {MANAGED_BY: OPERATOR_NAME}


@dataclass
class OperatorState:
    """What handlers share through kopf's memo: the API client and operator-wide defaults."""

    kube: KubeClient
    defaults: Defaults = field(default_factory=Defaults)
    workers: int = 8
    clusterwide: bool = False
    # Status writes of one fleet are serialised and always computed from the newest index
    # contents, so a slow writer can never overwrite a newer status with an older one.
    status_locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    written: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # The children the server last refused, per fleet: kept until an apply of them succeeds, so
    # a Deployment event in between does not report the fleet healthy.
    refused: dict[tuple[str, str], dict[tuple[str, str], str]] = field(default_factory=dict)
    rendered: dict[tuple[str, str], tuple[tuple[str, str], s.FleetSpec, dict[tuple[str, str], dict[str, Any]]]] = field(
        default_factory=dict
    )
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def desired(self, ref: FleetRef, spec: Any) -> tuple[s.FleetSpec, dict[tuple[str, str], dict[str, Any]]]:
        """The parsed spec and rendered children of a fleet, kept until its spec changes.

        Child events are the operator's hottest path (every status change of every child
        Deployment on a real cluster); re-validating and re-rendering the fleet for each of them
        was most of its CPU. Callers must not modify what this returns.
        """
        text = json.dumps(dict(spec), sort_keys=True, default=str)
        key = (ref.namespace, ref.name)
        with self._guard:
            hit = self.rendered.get(key)
        if hit is not None and hit[0] == (ref.uid, text):
            return hit[1], hit[2]
        fleet = parse_spec(spec)
        children = {child_key(c): c for c in render_children(ref, fleet, self.defaults)}
        with self._guard:
            self.rendered[key] = ((ref.uid, text), fleet, children)
        return fleet, children

    def status_lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self.status_locks.setdefault(key, threading.Lock())

    def forget(self, key: tuple[str, str]) -> None:
        with self._guard:
            self.status_locks.pop(key, None)
            self.written.pop(key, None)
            self.refused.pop(key, None)
            self.rendered.pop(key, None)


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_spec(spec: Any) -> s.FleetSpec:
    """The typed spec, or InvalidFleet with the first problem spelled out as `field: message`."""
    try:
        return s.FleetSpec.model_validate(dict(spec))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        raise InvalidFleet(f"spec.{where}: {err['msg']}" if where != "spec" else f"spec: {err['msg']}") from exc


def _state(memo: Any) -> OperatorState:
    state: OperatorState = memo.state
    return state


def _observations(deployment_index: Any, namespace: str, name: str) -> list[DeploymentObservation]:
    store = deployment_index.get((namespace, name), [])
    return list(store)


def _retryable(exc: KubeApiError) -> kopf.TemporaryError:
    return kopf.TemporaryError(f"API server said {exc}", delay=RETRY_DELAY)


def register(registry: kopf.OperatorRegistry, resync_seconds: float = 300.0) -> kopf.OperatorRegistry:
    """Attach every handler to `registry` (a fresh one per run, so tests can restart the operator).

    `resync_seconds` > 0 adds a periodic re-apply of each fleet: a safety net for changes whose
    watch events were lost or whose restore failed (no-op applies cost no writes).
    """
    fleets = (s.GROUP, s.VERSION, s.PLURAL)

    @kopf.on.startup(registry=registry, id="configure")
    def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        # Annotations, not status: the structural status schema would prune kopf's own fields.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="llmfleet.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="llmfleet.io", key="last-handled-configuration"
        )
        # After its own patch kopf waits for the watch to deliver that version before handling the
        # object again. On a busy API server events can lag past the 5 s default; kopf then acts on
        # the stale copy and re-runs creation (measured: 67 of 100 fleets reconciled twice).
        settings.persistence.consistency_timeout = 30.0
        settings.posting.level = logging.WARNING  # Events for problems only, not for every success
        settings.execution.max_workers = _state(memo).workers
        settings.watching.server_timeout = 600
        settings.networking.error_backoffs = [1, 2, 5, 10]
        # Watching named namespaces needs neither the namespace list nor the CRD list; without
        # this kopf scans both cluster-wide, which a namespaced Role forbids (403s and backoff).
        settings.scanning.disabled = not _state(memo).clusterwide

    @kopf.on.login(registry=registry, id="login")
    def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
        cfg = _state(memo).kube.api.configuration
        header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
        parts = header.split(" ", 1) if header else []
        scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
        return kopf.ConnectionInfo(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            scheme=scheme,
            token=token,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
        )

    @kopf.index(*fleets, registry=registry, id="fleet_index")
    def fleet_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str | None, str], dict[str, Any]]:
        return {(namespace, name): {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}}

    @kopf.index("apps", "v1", "deployments", labels=CHILD_SELECTOR, registry=registry, id="deployment_index")
    def deployment_index(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[tuple[str | None, str], Any]:
        fleet = labels.get(FLEET_LABEL)
        return {(namespace, fleet): DeploymentObservation.from_body(dict(body))} if fleet else {}

    @kopf.on.resume(*fleets, registry=registry, id="reconcile", backoff=RETRY_DELAY)
    @kopf.on.create(*fleets, registry=registry, id="reconcile", backoff=RETRY_DELAY)
    @kopf.on.update(*fleets, registry=registry, id="reconcile", backoff=RETRY_DELAY, field="spec")
    def reconcile(
        body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, namespace: str | None, name: str,
        uid: str, patch: kopf.Patch, memo: Any, logger: Any, **kwargs: Any,
    ) -> None:  # fmt: skip
        assert namespace is not None, "LLMFleet is a namespaced resource"
        deployment_index: kopf.Index = kwargs["deployment_index"]
        started = time.perf_counter()
        state = _state(memo)
        ref = FleetRef(name=name, namespace=namespace, uid=uid)
        generation = int(meta.get("generation", 1))
        try:
            fleet, rendered = state.desired(ref, spec)
            children = list(rendered.values())
        except InvalidFleet as exc:
            metrics.RECONCILES.labels(result="invalid").inc()
            degraded = status_invalid(generation, "InvalidSpec", str(exc), dict(status), _now(), _spec_replicas(spec))
            with state.status_lock((namespace, name)):
                state.written[(namespace, name)] = degraded
            patch.status.update(degraded)
            kopf.warn(body, reason="InvalidSpec", message=str(exc))
            raise kopf.PermanentError(f"invalid spec: {exc}") from exc
        try:
            _ensure_token_secret(state.kube, ref, logger)
            applied = _apply_all(state.kube, children)
            refused = _refusals(applied)
            if not refused:
                _prune(state.kube, ref, children, logger)
            _refresh_status(state, ref, fleet, generation, dict(status), deployment_index, applied)
        except KubeApiError as exc:
            metrics.RECONCILES.labels(result="retry").inc()
            raise _retryable(exc) from exc
        if refused:
            # Degraded with the refusal already written; retry slowly, as a hand edit may be undone.
            metrics.RECONCILES.labels(result="refused").inc()
            raise kopf.TemporaryError(f"the API server refused {'; '.join(refused)}", delay=RETRY_DELAY)
        metrics.RECONCILES.labels(result="applied").inc()
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        logger.info("applied %d children", len(children))

    if resync_seconds > 0:

        @kopf.timer(*fleets, registry=registry, id="resync", interval=resync_seconds, initial_delay=resync_seconds)
        def resync(spec: kopf.Spec, status: kopf.Status, namespace: str | None, name: str, uid: str, memo: Any,
                   logger: Any, **kwargs: Any) -> None:  # fmt: skip
            if not namespace or _invalid_spec(status):
                return  # an invalid spec waits for a spec change, not for the clock
            state = _state(memo)
            ref = FleetRef(name=name, namespace=namespace, uid=uid)
            try:
                fleet, rendered = state.desired(ref, spec)
                _ensure_token_secret(state.kube, ref, logger)
                applied = _apply_all(state.kube, list(rendered.values()))
                _refresh_status(state, ref, fleet, None, dict(status), kwargs["deployment_index"], applied)
            except InvalidFleet:
                return
            except KubeApiError as exc:
                logger.warning("resync of %s/%s failed, next try in %ss: %s", namespace, name, resync_seconds, exc)
            metrics.RESYNCS.inc()

    @kopf.on.delete(*fleets, registry=registry, id="cleanup", backoff=RETRY_DELAY)
    def cleanup(namespace: str | None, name: str, uid: str, memo: Any, logger: Any, **_: Any) -> None:
        assert namespace is not None, "LLMFleet is a namespaced resource"
        kube = _state(memo).kube
        try:
            deleted = 0
            for kind in reversed(CHILD_KINDS):
                for obj in kube.list(kind, namespace, f"{FLEET_LABEL}={name},{MANAGED_BY}={OPERATOR_NAME}"):
                    if _owned_by(obj, uid) and kube.delete(kind, namespace, obj["metadata"]["name"]):
                        deleted += 1
        except KubeApiError as exc:
            raise _retryable(exc) from exc
        _state(memo).forget((namespace, name))
        logger.info("deleted %d children", deleted)

    for kind in CHILD_KINDS:
        group, version, plural = KINDS[kind]
        kopf.on.event(group, version, plural, labels=CHILD_SELECTOR, registry=registry, id=f"child-{plural}")(
            _child_handler(kind)
        )
    return registry


Applied = dict[tuple[str, str], str | None]


def _apply_all(kube: KubeClient, children: list[dict[str, Any]]) -> Applied:
    """Apply every child; map each to None, or to the refusal that needs a person (`Kind name: reason`).

    One refused child does not hold the others back: each is independent, and a stale engine
    Deployment behind a broken Service is worse than either alone. Retryable errors propagate.
    """
    outcome: Applied = {}
    for child in children:
        try:
            kube.apply(child)
            metrics.APPLIES.labels(kind=child["kind"]).inc()
            outcome[child_key(child)] = None
        except KubeApiError as exc:
            if not exc.needs_a_person:
                raise
            outcome[child_key(child)] = f"{child['kind']} {child['metadata']['name']}: {exc}"
    return outcome


def _ensure_token_secret(kube: KubeClient, ref: FleetRef, logger: Any) -> None:
    """Create the fleet's sidecar token Secret unless it exists (the server answers 409; the
    operator needs no right to read Secrets). Never re-rendered: its value is random, and
    rewriting it would cut the dispatcher off its sidecars. Deleted by hand, it comes back with a
    new token at the next reconcile or resync, which pods pick up from the mounted file."""
    if kube.create(new_sidecar_token_secret(ref)):
        logger.info("created Secret %s with a new sidecar token", sidecar_token_secret(ref))


def _refusals(applied: Applied) -> list[str]:
    return [why for why in applied.values() if why]


def _invalid_spec(status: Any) -> bool:
    conditions = (status or {}).get("conditions") or []
    return any(c.get("type") == "Degraded" and c.get("status") == "True" and c.get("reason") == "InvalidSpec" for c in conditions)


def _spec_replicas(spec: Any) -> int | None:
    replicas = dict(spec).get("replicas", 1)
    return replicas if isinstance(replicas, int) else None


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(r.get("uid") == uid for r in obj.get("metadata", {}).get("ownerReferences", []))


def _prune(kube: KubeClient, ref: FleetRef, children: list[dict[str, Any]], logger: logging.Logger) -> None:
    """Delete per-group children whose group left the spec (the only children whose set changes)."""
    wanted = {child_key(c) for c in children}
    for kind in ("Deployment", "Service"):
        for obj in kube.list(kind, ref.namespace, f"{FLEET_LABEL}={ref.name},{MANAGED_BY}={OPERATOR_NAME}"):
            if (kind, obj["metadata"]["name"]) not in wanted and _owned_by(obj, ref.uid):
                kube.delete(kind, ref.namespace, obj["metadata"]["name"])
                logger.info("pruned %s %s", kind, obj["metadata"]["name"])


def _child_handler(kind: str):
    def on_child_event(
        event: kopf.RawEvent, body: kopf.Body, namespace: str | None, labels: kopf.Labels, memo: Any,
        fleet_index: kopf.Index, deployment_index: kopf.Index, logger: Any, **_: Any,
    ) -> None:  # fmt: skip
        fleet_name = labels.get(FLEET_LABEL)
        found = list(fleet_index.get((namespace, fleet_name), [])) if fleet_name and namespace else []
        if not found or found[0]["metadata"].get("deletionTimestamp"):
            return  # not ours any more, or being deleted: nothing to restore
        fleet_body = found[0]
        state = _state(memo)
        ref = FleetRef(str(fleet_name), str(namespace), fleet_body["metadata"]["uid"])
        if not _owned_by(dict(body), ref.uid):
            return
        try:
            fleet, children = state.desired(ref, fleet_body["spec"])
        except InvalidFleet:
            return  # the fleet is Degraded; its handler already said why
        actual = None if event.get("type") == "DELETED" else dict(body)
        desired = children.get((kind, body["metadata"]["name"]))
        applied: Applied = {}
        try:
            if desired is not None and drifted(desired, actual):
                logger.info("restoring %s %s (%s)", kind, body["metadata"]["name"], "deleted" if actual is None else "edited")
                applied = _apply_all(state.kube, [desired])
                if not _refusals(applied):
                    metrics.DRIFT_RESTORED.labels(kind=kind).inc()
            if kind == "Deployment" or applied:
                _refresh_status(state, ref, fleet, None, fleet_body.get("status") or {}, deployment_index, applied)
        except KubeApiError as exc:
            logger.warning("could not reconcile %s %s: %s", kind, body["metadata"]["name"], exc)

    on_child_event.__name__ = f"on_{kind.lower()}_event"
    return on_child_event


def _refresh_status(
    state: OperatorState,
    ref: FleetRef,
    fleet: s.FleetSpec,
    generation: int | None,
    stored: dict[str, Any],
    deployment_index: Any,
    applied: Applied | None = None,
) -> None:
    """Derive the status from the newest child observations and write it if it changed.

    `generation` is given only by the fleet handler, which has just applied that generation;
    child events keep the observedGeneration that was last written. `applied` is the outcome of
    the applies just made; refusals of children not applied this time stand until they are.
    """
    key = (ref.namespace, ref.name)
    with state.status_lock(key):
        known = state.refused.setdefault(key, {})
        for child, why in (applied or {}).items():
            if why:
                known[child] = why
            else:
                known.pop(child, None)
        refused = list(known.values())
        old = state.written.get(key) or stored
        if generation is None:
            generation = int(old.get("observedGeneration") or 1)
        observed = _observations(deployment_index, ref.namespace, ref.name)
        new = status_from_children(ref, fleet, generation, observed, old, _now(), refused)
        if status_changed(old, new) or key not in state.written:
            state.kube.patch_status("LLMFleet", ref.namespace, ref.name, new)
            metrics.STATUS_WRITES.inc()
        state.written[key] = new
