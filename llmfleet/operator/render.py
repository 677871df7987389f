"""Pure functions from a typed LLMFleet to the Kubernetes objects that run it.

Nothing here talks to the API server: `render_children` returns plain manifests that the operator
applies with server-side apply, and tests validate them against the real Kubernetes schemas.

Children of fleet NAME (all namespaced, each with a controller ownerReference to the fleet):
  ConfigMap NAME-scheduling        scheduling.yaml for the dispatcher
  Deployment NAME-GROUP            per length group: vLLM container + llmfleet sidecar
  Service NAME-GROUP (headless)    per group; its EndpointSlices inherit the Service's labels
                                   (llmfleet.io/fleet, component=engine, group), which is how the
                                   dispatcher discovers pods and their group
  PodDisruptionBudget NAME-engines at most one engine pod down at a time
  ServiceAccount/Role/RoleBinding  NAME-dispatcher: watch EndpointSlices, nothing else
  Deployment + Service             NAME-dispatcher: the gRPC front door (`render_dispatcher`)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmfleet.core.config import SchedulingConfig
from llmfleet.operator import names
from llmfleet.operator import spec as s
from llmfleet.operator.names import (  # noqa: F401 - re-exported: the fleet's shared names
    ALL_INTERFACES,
    COMPONENT_LABEL,
    CONFIG_DIR,
    CONFIG_HASH,
    DISPATCHER_HEALTH_PORT,
    DISPATCHER_METRICS_PORT,
    DISPATCHER_OPENAI_PORT,
    DISPATCHER_PORT,
    ENGINE_PORT,
    FLEET_LABEL,
    GROUP_LABEL,
    MANAGED_BY,
    OPERATOR_NAME,
    RANKER_DIR,
    SIDECAR_HEALTH_PORT,
    SIDECAR_METRICS_PORT,
    SIDECAR_PORT,
    FleetRef,
    selector_labels,
    sidecar_tls_server_name,
    sidecar_token_secret,
)
from llmfleet.operator.render_dispatcher import (
    render_dispatcher_deployment,
    render_dispatcher_rbac,
    render_dispatcher_service,
)
from llmfleet.operator.security import (
    RESTRICTED,
    SIDECAR_AUTH_DIR,
    SIDECAR_TLS_DIR,
    TOKEN_KEY,
    render_network_policies,
    token_volume,
)


@dataclass(frozen=True)
class Defaults:
    """Operator-wide settings a fleet may override (images come from the chart's values)."""

    dispatcher_image: str = "ghcr.io/llmfleet/dispatcher:0.1.0"
    sidecar_image: str = "ghcr.io/llmfleet/sidecar:0.1.0"


class InvalidFleet(ValueError):
    """A spec that passed the schema but cannot be rendered; the message says why."""


def group_replicas(spec: s.FleetSpec) -> dict[str, int]:
    """Spread `replicas` over the groups; groups pinned by `replicasPerGroup` keep their count."""
    names = spec.group_names()
    pinned = dict(spec.replicas_per_group or {})
    unknown = sorted(set(pinned) - set(names))
    if unknown:
        raise InvalidFleet(f"replicasPerGroup names unknown length groups {unknown}; groups are {names}")
    free = [n for n in names if n not in pinned]
    rest = spec.replicas - sum(pinned.values())
    if rest < 0:
        raise InvalidFleet(f"replicasPerGroup pins {sum(pinned.values())} pods but replicas is {spec.replicas}")
    if free and 0 < rest < len(free):
        raise InvalidFleet(f"replicas leaves {rest} pods for {len(free)} unpinned length groups; each needs one")
    out = dict(pinned)
    for i, n in enumerate(free):
        out[n] = rest // len(free) + (1 if i < rest % len(free) else 0)
    return {n: out[n] for n in names}


def scheduling_config(spec: s.FleetSpec) -> SchedulingConfig:
    """The dispatcher's config: the CRD's scheduling fields unchanged, the ranker as a path."""
    sched = spec.scheduling
    ranker = None
    if sched.ranker is not None:
        ranker = sched.ranker.path or RANKER_DIR
    try:
        return SchedulingConfig.model_validate({**sched.model_dump(exclude={"ranker"}), "ranker": ranker})
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise InvalidFleet(f"scheduling: {_first_error(exc)}") from exc


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        items = errors()
        if items:
            return str(items[0].get("msg", exc))
    return str(exc)


def render_config_map(ref: FleetRef, spec: s.FleetSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": names.meta(ref, f"{ref.name}-scheduling", names.labels(ref, "config")),
        "data": {"scheduling.yaml": scheduling_config(spec).to_yaml()},
    }


def _engine_args(spec: s.FleetSpec) -> list[str]:
    e = spec.engine
    return [
        "--model", spec.model.load_from,
        "--served-model-name", spec.model.served,
        "--port", str(ENGINE_PORT),
        "--max-model-len", str(e.max_model_len),
        "--gpu-memory-utilization", str(e.gpu_memory_utilization),
        "--kv-cache-dtype", e.kv_cache_dtype,
        "--tensor-parallel-size", str(e.tensor_parallel_size),
        # The dispatcher's rank travels as the priority (admission lookahead keeps its order).
        *(["--scheduling-policy", "priority"] if "--scheduling-policy" not in e.extra_args else []),
        *e.extra_args,
    ]  # fmt: skip


# vLLM's image runs as root; engine pods pass Pod Security `restricted` by running it as this
# non-root user (the llmfleet images' own uid), with a writable home for the model and compile caches.
ENGINE_UID = 65532
ENGINE_HOME = "/home/vllm"


def _env(spec: s.FleetSpec) -> list[dict[str, Any]]:
    """Our HOME unless the user sets their own; env is merged by name, so no name may repeat."""
    user = [v.model_dump(by_alias=True, exclude_none=True) for v in spec.engine.env]
    ours = [{"name": "HOME", "value": ENGINE_HOME}]
    return [v for v in ours if v["name"] not in {u["name"] for u in user}] + user


def render_engine_deployment(
    ref: FleetRef, spec: s.FleetSpec, group: str, replicas: int, defaults: Defaults
) -> dict[str, Any]:
    labels = names.labels(ref, "engine", **{GROUP_LABEL: group})
    match = {**selector_labels(ref.name, "engine"), GROUP_LABEL: group}
    http_probe = {"httpGet": {"path": "/health", "port": ENGINE_PORT}}
    tls = spec.sidecar.tls_secret
    grpc_probe = {"grpc": {"port": SIDECAR_HEALTH_PORT if tls else SIDECAR_PORT}}
    token_file = f"{SIDECAR_AUTH_DIR}/{TOKEN_KEY}"
    tls_args = ["--tls-cert", f"{SIDECAR_TLS_DIR}/tls.crt", "--tls-key", f"{SIDECAR_TLS_DIR}/tls.key",
                "--health-port", str(SIDECAR_HEALTH_PORT)] if tls else []  # fmt: skip
    drain_tls = ["--tls-ca", f"{SIDECAR_TLS_DIR}/ca.crt", "--tls-server-name", sidecar_tls_server_name(ref)] if tls else []
    vllm = {
        "name": "vllm",
        "image": spec.engine.image,
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": _engine_args(spec),
        "ports": [{"name": "http", "containerPort": ENGINE_PORT}],
        "env": _env(spec),
        "resources": spec.resources.manifest(spec.resources.gpus),
        # Loading weights can take many minutes; the startup probe holds liveness off until then.
        "startupProbe": {**http_probe, "periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": {**http_probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**http_probe, "periodSeconds": 10, "failureThreshold": 6},
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}, {"name": "home", "mountPath": ENGINE_HOME}],
        "securityContext": {**RESTRICTED, "runAsUser": ENGINE_UID, "runAsGroup": ENGINE_UID},
    }
    sidecar = {
        "name": "sidecar",
        "image": spec.sidecar.image or defaults.sidecar_image,
        "command": [
            "llmfleet", "sidecar",
            "--host", ALL_INTERFACES,
            "--port", str(SIDECAR_PORT),
            "--engine-url", f"http://127.0.0.1:{ENGINE_PORT}",
            "--metrics-port", str(SIDECAR_METRICS_PORT),
            "--group", group,
            "--auth-token-file", token_file,
            *tls_args,
        ],  # fmt: skip
        "ports": [
            {"name": "grpc", "containerPort": SIDECAR_PORT},
            {"name": "metrics", "containerPort": SIDECAR_METRICS_PORT},
            *([{"name": "health", "containerPort": SIDECAR_HEALTH_PORT}] if tls else []),
        ],
        "resources": spec.sidecar.resources.manifest(),
        # The sidecar detokenizes sliced requests itself, with the model's tokenizer from the
        # Hugging Face cache vLLM fills in the shared home (read-only here, never downloaded).
        "env": [{"name": "HF_HOME", "value": f"{ENGINE_HOME}/.cache/huggingface"}, {"name": "HF_HUB_OFFLINE", "value": "1"}],
        "volumeMounts": [
            {"name": "home", "mountPath": ENGINE_HOME, "readOnly": True},
            {"name": "sidecar-auth", "mountPath": SIDECAR_AUTH_DIR, "readOnly": True},
            *([{"name": "sidecar-tls", "mountPath": SIDECAR_TLS_DIR, "readOnly": True}] if tls else []),
        ],
        "readinessProbe": {**grpc_probe, "periodSeconds": 5},
        # Liveness asks the "liveness" health service, which serves while the process runs; the
        # default service means "ready" and is off while no engine is up, which is no reason to restart.
        "livenessProbe": {"grpc": {**grpc_probe["grpc"], "service": "liveness"}, "periodSeconds": 10, "failureThreshold": 6},
        # Drain first: in-flight slices finish or migrate before the engine goes away.
        "lifecycle": {"preStop": {"exec": {"command": [
            "llmfleet", "sidecar", "drain", "--port", str(SIDECAR_PORT), "--auth-token-file", token_file, *drain_tls,
        ]}}},  # fmt: skip
        "securityContext": {**RESTRICTED, "runAsNonRoot": True, "readOnlyRootFilesystem": True},
    }
    pod_spec: dict[str, Any] = {
        "containers": [vllm, sidecar],
        "terminationGracePeriodSeconds": 120,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "fsGroup": ENGINE_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.engine.shm_size}},
            {"name": "home", "emptyDir": {}},
            token_volume(ref),
            *([{"name": "sidecar-tls", "secret": {"secretName": tls}}] if tls else []),
        ],
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    if spec.affinity:
        pod_spec["affinity"] = dict(spec.affinity)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": names.meta(ref, f"{ref.name}-{group}", labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": match},
            # Surge instead of taking a GPU pod down first: capacity never drops during a roll.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


def render_engine_service(ref: FleetRef, group: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.meta(ref, f"{ref.name}-{group}", names.labels(ref, "engine", **{GROUP_LABEL: group})),
        "spec": {
            "clusterIP": "None",
            "selector": {**selector_labels(ref.name, "engine"), GROUP_LABEL: group},
            # vLLM's own port is not published: only the sidecar beside it calls it.
            "ports": [
                {"name": "grpc", "port": SIDECAR_PORT, "targetPort": SIDECAR_PORT},
                {"name": "metrics", "port": SIDECAR_METRICS_PORT, "targetPort": SIDECAR_METRICS_PORT},
            ],
        },
    }


def render_pdb(ref: FleetRef) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": names.meta(ref, f"{ref.name}-engines", names.labels(ref, "engine")),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(ref.name, "engine")}},
    }


def render_children(ref: FleetRef, spec: s.FleetSpec, defaults: Defaults | None = None) -> list[dict[str, Any]]:
    """Every object the fleet needs, in apply order. Raises InvalidFleet for specs that cannot run."""
    defaults = defaults or Defaults()
    children = [render_config_map(ref, spec)]  # first: a broken scheduling block is the clearer error
    replicas = group_replicas(spec)
    # Deployments last: once they exist (and so can report Ready), everything they need exists too.
    children.extend(render_dispatcher_rbac(ref))
    children.extend(render_engine_service(ref, group) for group in replicas)
    children.append(render_dispatcher_service(ref, spec))
    children.append(render_pdb(ref))
    children.extend(render_network_policies(ref, spec))
    children.extend(render_engine_deployment(ref, spec, group, count, defaults) for group, count in replicas.items())
    image = spec.dispatcher.image or defaults.dispatcher_image
    children.append(render_dispatcher_deployment(ref, spec, image, scheduling_config(spec).to_yaml()))
    return children
