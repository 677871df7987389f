"""Names, labels, ports and owner metadata that every object of a fleet shares.

Kept apart from `render` so that `render` and `security` can both build on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmfleet.operator import spec as s

OPERATOR_NAME = "llmfleet-operator"
FLEET_LABEL = "llmfleet.io/fleet"
COMPONENT_LABEL = "llmfleet.io/component"
GROUP_LABEL = "llmfleet.io/group"
MANAGED_BY = "app.kubernetes.io/managed-by"
CONFIG_HASH = "llmfleet.io/config-hash"

ENGINE_PORT = 8000
SIDECAR_PORT = 50061
SIDECAR_METRICS_PORT = 9091
DISPATCHER_PORT = 50051
DISPATCHER_OPENAI_PORT = 8000
DISPATCHER_HEALTH_PORT = 50052  # plaintext health only: kubelet's grpc probes cannot speak TLS
DISPATCHER_METRICS_PORT = 9090
SIDECAR_HEALTH_PORT = 50062  # plaintext health only, when the sidecar API uses TLS
ALL_INTERFACES = "[::]"  # pods bind every interface; the CLIs default to loopback
CONFIG_DIR = "/etc/llmfleet"
RANKER_DIR = "/etc/llmfleet/ranker"


@dataclass(frozen=True)
class FleetRef:
    """Identity of the owning LLMFleet, for names, labels and ownerReferences."""

    name: str
    namespace: str
    uid: str


def selector_labels(fleet: str, component: str) -> dict[str, str]:
    return {FLEET_LABEL: fleet, COMPONENT_LABEL: component}


def labels(ref: FleetRef, component: str, **extra: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "llmfleet",
        "app.kubernetes.io/instance": ref.name,
        "app.kubernetes.io/component": component,
        MANAGED_BY: OPERATOR_NAME,
        **selector_labels(ref.name, component),
        **extra,
    }


def meta(ref: FleetRef, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ref.namespace,
        "labels": dict(labels),
        "ownerReferences": [
            {
                "apiVersion": f"{s.GROUP}/{s.VERSION}",
                "kind": s.KIND,
                "name": ref.name,
                "uid": ref.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def sidecar_tls_server_name(ref: FleetRef) -> str:
    """The name a fleet's sidecar certificate must be issued for (pods are dialled by IP)."""
    return f"{ref.name}-sidecar"


def sidecar_token_secret(ref: FleetRef) -> str:
    """The Secret holding the token between the fleet's dispatcher and its sidecars."""
    return f"{ref.name}-sidecar-token"
