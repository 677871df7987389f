"""The dispatcher's objects for a fleet: its ServiceAccount and Role (it watches EndpointSlices and
nothing else), its Deployment and its Service, and the addresses clients reach it at.

Pure functions, like the rest of `render`, which applies them in order with the engines' objects.
"""

from __future__ import annotations

import hashlib
from typing import Any

from llmfleet.operator import names
from llmfleet.operator import spec as s
from llmfleet.operator.names import (
    ALL_INTERFACES,
    COMPONENT_LABEL,
    CONFIG_DIR,
    CONFIG_HASH,
    DISPATCHER_HEALTH_PORT,
    DISPATCHER_METRICS_PORT,
    DISPATCHER_OPENAI_PORT,
    DISPATCHER_PORT,
    FLEET_LABEL,
    RANKER_DIR,
    SIDECAR_PORT,
    FleetRef,
    selector_labels,
    sidecar_tls_server_name,
)
from llmfleet.operator.security import RESTRICTED, SIDECAR_AUTH_DIR, SIDECAR_TLS_DIR, TOKEN_KEY, token_volume


def render_dispatcher_rbac(ref: FleetRef) -> list[dict[str, Any]]:
    name = f"{ref.name}-dispatcher"
    labels = names.labels(ref, "dispatcher")
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": names.meta(ref, name, labels)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": names.meta(ref, name, labels),
            "rules": [
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": names.meta(ref, name, labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ref.namespace}],
        },
    ]


def _dispatcher_args(ref: FleetRef, spec: s.FleetSpec) -> list[str]:
    args = [
        "llmfleet", "dispatcher",
        "--host", ALL_INTERFACES,
        "--port", str(DISPATCHER_PORT),
        "--metrics-port", str(DISPATCHER_METRICS_PORT),
        "--config", f"{CONFIG_DIR}/scheduling.yaml",
        "--discovery", "kubernetes",
        "--namespace", "$(POD_NAMESPACE)",
        "--selector", f"{FLEET_LABEL}={ref.name},{COMPONENT_LABEL}=engine",
        "--sidecar-port", str(SIDECAR_PORT),
        "--sidecar-token-file", f"{SIDECAR_AUTH_DIR}/{TOKEN_KEY}",
    ]  # fmt: skip
    if spec.sidecar.tls_secret:
        args += ["--sidecar-tls-ca", f"{SIDECAR_TLS_DIR}/ca.crt", "--sidecar-tls-server-name", sidecar_tls_server_name(ref)]
    if spec.dispatcher.tls_secret:
        args += ["--tls-cert", f"{CONFIG_DIR}/tls/tls.crt", "--tls-key", f"{CONFIG_DIR}/tls/tls.key",
                 "--health-port", str(DISPATCHER_HEALTH_PORT)]  # fmt: skip
    if spec.dispatcher.auth_secret:
        args += ["--auth-token-file", f"{CONFIG_DIR}/auth/token"]
    if spec.dispatcher.openai_port is not None:
        args += ["--openai-port", str(DISPATCHER_OPENAI_PORT)]
    return args


def render_dispatcher_deployment(ref: FleetRef, spec: s.FleetSpec, image: str, config_text: str) -> dict[str, Any]:
    """`image`: the fleet's or the operator's default; `config_text`: the scheduling ConfigMap's
    content, whose hash rolls the pods when it changes."""
    name = f"{ref.name}-dispatcher"
    labels = names.labels(ref, "dispatcher")
    d = spec.dispatcher
    mounts = [{"name": "config", "mountPath": f"{CONFIG_DIR}/scheduling.yaml", "subPath": "scheduling.yaml", "readOnly": True}]
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": f"{ref.name}-scheduling"}}, token_volume(ref)]
    mounts.append({"name": "sidecar-auth", "mountPath": SIDECAR_AUTH_DIR, "readOnly": True})
    if spec.sidecar.tls_secret:  # the CA only: the dispatcher verifies sidecars, it holds no sidecar key
        mounts.append({"name": "sidecar-tls", "mountPath": SIDECAR_TLS_DIR, "readOnly": True})
        volumes.append({"name": "sidecar-tls", "secret": {"secretName": spec.sidecar.tls_secret,
                                                          "items": [{"key": "ca.crt", "path": "ca.crt"}]}})  # fmt: skip
    if d.tls_secret:
        mounts.append({"name": "tls", "mountPath": f"{CONFIG_DIR}/tls", "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": d.tls_secret}})
    if d.auth_secret:
        mounts.append({"name": "auth", "mountPath": f"{CONFIG_DIR}/auth", "readOnly": True})
        volumes.append({"name": "auth", "secret": {"secretName": d.auth_secret, "items": [{"key": "token", "path": "token"}]}})
    ranker = spec.scheduling.ranker
    if ranker is not None and ranker.config_map:
        mounts.append({"name": "ranker", "mountPath": RANKER_DIR, "readOnly": True})
        volumes.append({"name": "ranker", "configMap": {"name": ranker.config_map}})
    grpc_probe = {"grpc": {"port": DISPATCHER_HEALTH_PORT if d.tls_secret else DISPATCHER_PORT}}
    container = {
        "name": "dispatcher",
        "image": image,
        "command": _dispatcher_args(ref, spec),
        "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
        "ports": [
            {"name": "grpc", "containerPort": DISPATCHER_PORT},
            {"name": "metrics", "containerPort": DISPATCHER_METRICS_PORT},
            *([{"name": "http", "containerPort": DISPATCHER_OPENAI_PORT}] if d.openai_port is not None else []),
            *([{"name": "health", "containerPort": DISPATCHER_HEALTH_PORT}] if d.tls_secret else []),
        ],
        "resources": d.resources.manifest(),
        "readinessProbe": {**grpc_probe, "periodSeconds": 5},
        # Liveness asks the "liveness" health service, which serves while the process runs; the
        # default service means "ready" and is off while no engine is up, which is no reason to restart.
        "livenessProbe": {"grpc": {**grpc_probe["grpc"], "service": "liveness"}, "periodSeconds": 10, "failureThreshold": 6},
        "volumeMounts": mounts,
        "securityContext": {**RESTRICTED, "runAsNonRoot": True, "readOnlyRootFilesystem": True},
    }
    # A ConfigMap change does not restart pods by itself; the hash in the template does.
    config_hash = hashlib.sha256(config_text.encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": names.meta(ref, name, labels),
        "spec": {
            "replicas": d.replicas,
            "selector": {"matchLabels": selector_labels(ref.name, "dispatcher")},
            "template": {
                "metadata": {"labels": dict(labels), "annotations": {CONFIG_HASH: config_hash}},
                "spec": {
                    "serviceAccountName": name,
                    "containers": [container],
                    "volumes": volumes,
                    "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                },
            },
        },
    }


def render_dispatcher_service(ref: FleetRef, spec: s.FleetSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.meta(ref, f"{ref.name}-dispatcher", names.labels(ref, "dispatcher")),
        "spec": {
            "type": spec.dispatcher.service_type,
            "selector": selector_labels(ref.name, "dispatcher"),
            "ports": [
                {"name": "grpc", "port": spec.dispatcher.port, "targetPort": DISPATCHER_PORT, "appProtocol": "grpc"},
                *([{"name": "http", "port": spec.dispatcher.openai_port, "targetPort": DISPATCHER_OPENAI_PORT,
                    "appProtocol": "http"}] if spec.dispatcher.openai_port is not None else []),  # fmt: skip
                {"name": "metrics", "port": DISPATCHER_METRICS_PORT, "targetPort": DISPATCHER_METRICS_PORT},
            ],
        },
    }


def dispatcher_endpoint(ref: FleetRef, spec: s.FleetSpec) -> str:
    return f"{ref.name}-dispatcher.{ref.namespace}.svc:{spec.dispatcher.port}"


def openai_base_url(ref: FleetRef, spec: s.FleetSpec) -> str | None:
    port = spec.dispatcher.openai_port
    return f"http://{ref.name}-dispatcher.{ref.namespace}.svc:{port}/v1" if port is not None else None
