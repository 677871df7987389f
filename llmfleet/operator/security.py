"""What guards a fleet's data plane inside the cluster: the sidecar token Secret and the NetworkPolicies.

The sidecar API runs slices and drains pods, so only the fleet's own dispatcher may call it:
- every fleet gets a Secret NAME-sidecar-token with a random `token`. The operator creates it
  once (`new_sidecar_token_secret`), never re-renders it (the value is not derived from the
  spec), and creates a fresh one if it is deleted. Sidecars require the token (their
  `--auth-token-file`), the dispatcher sends it (`--sidecar-token-file`); both re-read the mounted
  file, so a new token takes effect without restarts.
- NetworkPolicy NAME-engines: the sidecar port only from the fleet's dispatcher pods, metrics only
  from `networkPolicy.metricsFrom`; vLLM's own port from nowhere (the sidecar reaches it over the
  pod's loopback, which NetworkPolicies do not govern).
- NetworkPolicy NAME-dispatcher: the gRPC and OpenAI ports (and the plaintext health port, with
  TLS) from `networkPolicy.clientsFrom` (default anyone), metrics only from `metricsFrom`.
Kubelet probes come from the node, which network plugins allow whatever the policies say.

Also here, for the pod templates of both: the containers' `restricted` security context, the
token Secret's volume and where the token and the sidecar TLS files are mounted.
"""

from __future__ import annotations

import secrets
from typing import Any

from llmfleet.operator import spec as s
from llmfleet.operator.names import (
    CONFIG_DIR,
    DISPATCHER_HEALTH_PORT,
    DISPATCHER_METRICS_PORT,
    DISPATCHER_OPENAI_PORT,
    DISPATCHER_PORT,
    SIDECAR_METRICS_PORT,
    SIDECAR_PORT,
    FleetRef,
    labels,
    meta,
    selector_labels,
    sidecar_token_secret,
)

TOKEN_KEY = "token"
SIDECAR_AUTH_DIR = f"{CONFIG_DIR}/sidecar-auth"
SIDECAR_TLS_DIR = f"{CONFIG_DIR}/sidecar-tls"
# Every container's security context: Pod Security's `restricted` profile asks for these.
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def new_sidecar_token_secret(ref: FleetRef, token: str | None = None) -> dict[str, Any]:
    """The fleet's sidecar token Secret, with a fresh random token unless one is given."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(ref, sidecar_token_secret(ref), labels(ref, "sidecar-token")),
        "type": "Opaque",
        "stringData": {TOKEN_KEY: token or secrets.token_urlsafe(32)},
    }


def token_volume(ref: FleetRef) -> dict[str, Any]:
    """The sidecar token Secret as a volume (mounted at SIDECAR_AUTH_DIR by sidecars and the dispatcher)."""
    items = [{"key": TOKEN_KEY, "path": TOKEN_KEY}]
    return {"name": "sidecar-auth", "secret": {"secretName": sidecar_token_secret(ref), "items": items}}


def _peers(peers: list[s.NetworkPeer]) -> list[dict[str, Any]]:
    return [p.model_dump(by_alias=True, exclude_none=True) for p in peers]


def _rule(ports: list[int], peers: list[s.NetworkPeer] | None) -> list[dict[str, Any]]:
    """One ingress rule; `peers` None allows every source. An empty list allows none, which in
    NetworkPolicy terms is no rule at all: an empty `from` would mean everyone."""
    if peers is not None and not peers:
        return []
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": p} for p in ports]}
    if peers is not None:
        rule["from"] = _peers(peers)
    return [rule]


def render_network_policies(ref: FleetRef, spec: s.FleetSpec) -> list[dict[str, Any]]:
    np = spec.network_policy
    if not np.enabled:
        return []
    dispatchers = [s.NetworkPeer(pod_selector=s.LabelSelector(match_labels=selector_labels(ref.name, "dispatcher")))]
    api_ports = [DISPATCHER_PORT]
    if spec.dispatcher.openai_port is not None:
        api_ports.append(DISPATCHER_OPENAI_PORT)
    if spec.dispatcher.tls_secret:
        api_ports.append(DISPATCHER_HEALTH_PORT)

    def policy(component: str, ingress: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta(ref, f"{ref.name}-{component}s" if component == "engine" else f"{ref.name}-{component}",
                              labels(ref, component)),  # fmt: skip
            "spec": {
                "podSelector": {"matchLabels": selector_labels(ref.name, component)},
                "policyTypes": ["Ingress"],
                "ingress": ingress,
            },
        }

    return [
        policy("engine", _rule([SIDECAR_PORT], dispatchers) + _rule([SIDECAR_METRICS_PORT], np.metrics_from)),
        policy("dispatcher", _rule(api_ports, np.clients_from) + _rule([DISPATCHER_METRICS_PORT], np.metrics_from)),
    ]
